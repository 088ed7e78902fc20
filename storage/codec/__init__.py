"""Layered lossless JPEG 2000 masters: encode, inspect, cut, measure, transcode."""

from .codestream import CodestreamError, CodestreamInfo, info, levels_to_drop, without_padding
from .cutter import CutError, cut
from .fidelity import LayerFidelity, fidelity_ladder
from .htj2k import HTJ2KError, decode_htj2k, to_htj2k
from .layered_j2k import LADDER, MasterNotPossible, decode, encode_master
from .openjpeg import glymur_module, openjpeg_version

__all__ = [
    "LADDER",
    "CodestreamError",
    "CodestreamInfo",
    "CutError",
    "HTJ2KError",
    "LayerFidelity",
    "MasterNotPossible",
    "cut",
    "decode",
    "decode_htj2k",
    "encode_master",
    "fidelity_ladder",
    "glymur_module",
    "info",
    "levels_to_drop",
    "openjpeg_version",
    "to_htj2k",
    "without_padding",
]
