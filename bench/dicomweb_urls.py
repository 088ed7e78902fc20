"""What the benchmarks ask a DICOMweb server for: the URLs of the study list, the CT series' metadata,
instances and frames, and the Accept headers a viewer sends."""

from __future__ import annotations

from bench.corpus import Corpus

DICOM_JSON = "application/dicom+json"
# OHIF's default for frames: the server picks the transfer syntax.
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FRAME_NATIVE_ACCEPT = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)
# OHIF's study list query (StudyListWithFilters), verbatim.
STUDY_LIST_INCLUDE = "00081030,00080060,00080090,00100030"


def study_list_url(dicomweb_url: str, patient_name: str) -> str:
    """OHIF's study list query, verbatim apart from the PatientName filter."""
    return (
        f"{dicomweb_url}/studies?PatientName={patient_name}&limit=101&offset=0&fuzzymatching=false"
        f"&includefield={STUDY_LIST_INCLUDE}"
    )


def series_url(dicomweb_url: str, study: str, series: str) -> str:
    return f"{dicomweb_url}/studies/{study}/series/{series}"


def instance_url(dicomweb_url: str, study: str, series: str, sop: str) -> str:
    return f"{series_url(dicomweb_url, study, series)}/instances/{sop}"


def series_metadata_url(dicomweb_url: str, corpus: Corpus) -> str:
    return f"{series_url(dicomweb_url, corpus.ct_study_uid, corpus.ct_series_uid)}/metadata"


def ct_instance_urls(dicomweb_url: str, corpus: Corpus) -> list[str]:
    """The CT series' instances, in slice order."""
    return [
        instance_url(dicomweb_url, corpus.ct_study_uid, corpus.ct_series_uid, sop)
        for sop in corpus.ct_sop_uids
    ]


def frame_urls(dicomweb_url: str, corpus: Corpus) -> list[str]:
    """Frame 1 of every CT slice, in slice order."""
    return [f"{url}/frames/1" for url in ct_instance_urls(dicomweb_url, corpus)]
