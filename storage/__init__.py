"""Storage and imaging core: index (SQL), blob store, ingest, codecs. Knows nothing of HTTP."""

from pydicom import config as _pydicom_config

# Received files are kept exactly as they are; pydicom's warnings about odd values in them would only
# flood the log (and cost time on every parse).
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
