"""Storage and imaging core: index (SQL), blob store, ingest, codecs. Knows nothing of HTTP.

This module is the public API: the HTTP layer (dicomweb/) imports only what is named here. The archive
is the one door; the rest are the values that pass through it and the errors it raises.
"""

from pydicom import config as _pydicom_config

# Received files are kept exactly as they are; pydicom's warnings about odd values in them would only
# flood the log (and cost time on every parse).
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE

from storage.api_keys import SCOPES, ApiKey, ApiKeyError, ApiKeys, open_api_keys, parse_labels, parse_scopes
from storage.archive import (
    CANNOT_UNDERSTAND,
    Archive,
    Outcome,
    SearchResult,
    Upload,
)
from storage.blobs import BlobStoreUnavailable
from storage.codec_check import CodecStackError, check_codec_stack
from storage.config import (
    DEFAULTS,
    LOG_LEVELS,
    SettingError,
    Settings,
    check_blob_url,
    ohif_dist_override,
    settings_from_env,
    user_data_home,
    viewer_demo_dir_override,
)
from storage.dicom_file import BASE_PLACEHOLDER
from storage.errors import INDEX_UNREACHABLE, BadRequest, CannotProduce, NotFound, NotReady, StorageError
from storage.frame_forms import WHOLE, FramePlan, Subset, plan_frame
from storage.index import InstanceRecord, MasterState
from storage.ladder import ladder_measured, with_measured_flags
from storage.lifecycle import ApplyResult, Policy, PolicyError, PolicyPlan, load_policy
from storage.lifecycle.schedule import run_on_schedule
from storage.preview import PREVIEW, PREVIEW_RULE, instance_preview_layers
from storage.query import Level
from storage.render import (
    DEFAULT_QUALITY,
    JPEG,
    MEDIA_TYPES,
    PNG,
    THUMBNAIL_SIZE,
    WINDOW_FUNCTIONS,
    Region,
    RenderOptions,
    Viewport,
    Window,
)
from storage.stats import StorageStats
from storage.tags import parse_attribute
from storage.transfer_syntaxes import EXPLICIT_LE, IMPLICIT_LE, OCTET_STREAM, syntax
from storage.uids import is_valid_uid
from storage.verify import verify_archive

__all__ = [
    "BASE_PLACEHOLDER",
    "CANNOT_UNDERSTAND",
    "DEFAULTS",
    "DEFAULT_QUALITY",
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "INDEX_UNREACHABLE",
    "JPEG",
    "LOG_LEVELS",
    "MEDIA_TYPES",
    "OCTET_STREAM",
    "PNG",
    "PREVIEW",
    "PREVIEW_RULE",
    "SCOPES",
    "THUMBNAIL_SIZE",
    "WHOLE",
    "WINDOW_FUNCTIONS",
    "ApiKey",
    "ApiKeyError",
    "ApiKeys",
    "ApplyResult",
    "Archive",
    "BadRequest",
    "BlobStoreUnavailable",
    "CannotProduce",
    "CodecStackError",
    "FramePlan",
    "InstanceRecord",
    "Level",
    "MasterState",
    "NotFound",
    "NotReady",
    "Outcome",
    "Policy",
    "PolicyError",
    "PolicyPlan",
    "Region",
    "RenderOptions",
    "SearchResult",
    "SettingError",
    "Settings",
    "StorageError",
    "StorageStats",
    "Subset",
    "Upload",
    "Viewport",
    "Window",
    "check_blob_url",
    "check_codec_stack",
    "instance_preview_layers",
    "is_valid_uid",
    "ladder_measured",
    "load_policy",
    "ohif_dist_override",
    "open_api_keys",
    "parse_attribute",
    "parse_labels",
    "parse_scopes",
    "plan_frame",
    "run_on_schedule",
    "settings_from_env",
    "syntax",
    "user_data_home",
    "verify_archive",
    "viewer_demo_dir_override",
    "with_measured_flags",
]
