"""QIDO-RS (PS3.18 10.6, matching per PS3.4 C.2.2.2) against the real server.

The server is shared with other test modules, so every test stores its own instances with fresh UIDs
and a PatientID of its own, and scopes each query by that PatientID or by its own study UID.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_DATA, PYDICOM_TEST_FILES, Server, new_uids, stow

CT_SMALL = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
MR_SMALL = (PYDICOM_TEST_FILES / "MR_small.dcm").read_bytes()
EMRI_SMALL = (PYDICOM_DATA / "emri_small.dcm").read_bytes()

DICOM_JSON = "application/dicom+json"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
RETRIEVE_URL = "00081190"
MODALITIES_IN_STUDY = "00080061"
SOP_CLASSES_IN_STUDY = "00080062"
NUM_STUDY_SERIES = "00201206"
NUM_STUDY_INSTANCES = "00201208"
NUM_SERIES_INSTANCES = "00201209"

# PS3.18 Table 6.7.1-2, 6.7.1-2a and 6.7.1-2b: attributes returned without includefield.
STUDY_DEFAULTS = (
    "00080005",
    "00080020",
    "00080030",
    "00080050",
    "00080056",
    "00080061",
    "00080090",
    "00080201",
    "00081190",
    "00100010",
    "00100020",
    "00100030",
    "00100040",
    "0020000D",
    "00200010",
    "00201206",
    "00201208",
)
SERIES_DEFAULTS = (
    "00080005",
    "00080060",
    "00080201",
    "0008103E",
    "00081190",
    "0020000E",
    "00200011",
    "00201209",
    "00400244",
    "00400245",
    "00400275",
)
INSTANCE_DEFAULTS = (
    "00080005",
    "00080016",
    "00080018",
    "00080056",
    "00080201",
    "00081190",
    "00200013",
    "00280010",
    "00280011",
    "00280100",
    "00280008",
)
# Defaults the server computes, so they are there whatever the stored data holds.
STUDY_COMPUTED = ("00080061", "00081190", "0020000D", "00201206", "00201208")
SERIES_COMPUTED = ("00081190", "0020000E", "00201209")
INSTANCE_COMPUTED = ("00080016", "00080018", "00081190")


# ---- helpers -----------------------------------------------------------------------------------------

Result = dict[str, Any]


def unique_pid(prefix: str = "QIDO") -> str:
    return f"{prefix}-{uuid.uuid4().hex.upper()}"


def dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def store(client: httpx.Client, *files: bytes) -> list[Dataset]:
    response = stow(client, list(files))
    assert response.status_code == 200, response.text
    return [dataset(f) for f in files]


def store_one(client: httpx.Client, source: bytes, **changes: str) -> Dataset:
    return store(client, new_uids(source, **changes))[0]


def search(client: httpx.Client, path: str, params: Any = None, **kwargs: Any) -> list[Result]:
    response = client.get(path, params=params, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    results = response.json()
    assert isinstance(results, list)
    return results


def values(result: Result, tag: str) -> list[Any]:
    return result.get(tag, {}).get("Value", [])


def value(result: Result, tag: str) -> Any:
    found = values(result, tag)
    assert found, f"{tag} missing or empty in {result}"
    return found[0]


def uids_of(results: list[Result], tag: str) -> set[str]:
    return {value(r, tag) for r in results}


def study_uids(client: httpx.Client, **params: str) -> set[str]:
    return uids_of(search(client, "/studies", params), STUDY_UID)


def assert_bad_request(response: httpx.Response, mention: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert mention.lower() in body["error"].lower(), body["error"]


@dataclass
class TwoSeriesStudy:
    """One study: a CT series of two instances and an MR series of one."""

    pid: str
    study: str
    ct_series: str
    mr_series: str
    ct_sops: list[str] = field(default_factory=list)
    mr_sops: list[str] = field(default_factory=list)

    @property
    def all_sops(self) -> set[str]:
        return set(self.ct_sops) | set(self.mr_sops)


def store_two_series_study(client: httpx.Client, pid: str | None = None) -> TwoSeriesStudy:
    pid = pid or unique_pid()
    st = TwoSeriesStudy(pid, generate_uid(), generate_uid(), generate_uid())
    common = {
        "study": st.study,
        "PatientID": pid,
        "PatientName": "Two^Series",
        "StudyDate": "20200615",
        "StudyTime": "101500",
    }
    files = [
        new_uids(CT_SMALL, series=st.ct_series, InstanceNumber="1", **common),
        new_uids(CT_SMALL, series=st.ct_series, InstanceNumber="2", **common),
        new_uids(MR_SMALL, series=st.mr_series, **common),
    ]
    stored = store(client, *files)
    st.ct_sops = [ds.SOPInstanceUID for ds in stored[:2]]
    st.mr_sops = [stored[2].SOPInstanceUID]
    return st


# ---- the six resources -------------------------------------------------------------------------------


def test_search_all_studies(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, "/studies", {"PatientID": st.pid})
    assert uids_of(results, STUDY_UID) == {st.study}


def test_search_all_series(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, "/series", {"PatientID": st.pid})
    assert uids_of(results, SERIES_UID) == {st.ct_series, st.mr_series}
    assert uids_of(results, STUDY_UID) == {st.study}


def test_search_all_instances(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, "/instances", {"PatientID": st.pid})
    assert uids_of(results, SOP_UID) == st.all_sops
    assert uids_of(results, STUDY_UID) == {st.study}
    assert uids_of(results, SERIES_UID) == {st.ct_series, st.mr_series}


def test_search_series_of_study(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, f"/studies/{st.study}/series")
    assert uids_of(results, SERIES_UID) == {st.ct_series, st.mr_series}


def test_search_instances_of_study(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, f"/studies/{st.study}/instances")
    assert uids_of(results, SOP_UID) == st.all_sops


def test_search_instances_of_series(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, f"/studies/{st.study}/series/{st.ct_series}/instances")
    assert uids_of(results, SOP_UID) == set(st.ct_sops)


def test_series_of_study_filtered_by_modality(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, f"/studies/{st.study}/series", {"Modality": "MR"})
    assert uids_of(results, SERIES_UID) == {st.mr_series}


# ---- single value and UID list matching ---------------------------------------------------------------


def test_single_value_match(client: httpx.Client) -> None:
    pid = unique_pid()
    mine = store_one(client, CT_SMALL, PatientID=pid, AccessionNumber="ACC-ONE")
    store_one(client, CT_SMALL, PatientID=pid, AccessionNumber="ACC-TWO")
    assert study_uids(client, PatientID=pid, AccessionNumber="ACC-ONE") == {mine.StudyInstanceUID}


def test_single_value_match_without_match_is_empty(client: httpx.Client) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid)
    assert search(client, "/studies", {"PatientID": pid, "AccessionNumber": "NOPE"}) == []


def test_attribute_by_keyword_and_by_tag(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid)
    by_keyword = search(client, "/studies", {"PatientID": pid})
    by_tag = search(client, "/studies", {"00100020": pid})
    assert uids_of(by_keyword, STUDY_UID) == uids_of(by_tag, STUDY_UID) == {ds.StudyInstanceUID}


def test_sop_instance_uid_by_tag(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, f"/studies/{st.study}/instances", {"00080018": st.mr_sops[0]})
    assert uids_of(results, SOP_UID) == set(st.mr_sops)


@pytest.mark.parametrize("separator", [",", "\\"])
def test_study_uid_list(client: httpx.Client, separator: str) -> None:
    pid = unique_pid()
    a, b, _c = (store_one(client, CT_SMALL, PatientID=pid).StudyInstanceUID for _ in range(3))
    assert study_uids(client, PatientID=pid, StudyInstanceUID=f"{a}{separator}{b}") == {a, b}


def test_series_uid_list(client: httpx.Client) -> None:
    pid = unique_pid()
    first = store_two_series_study(client, pid)
    second = store_two_series_study(client, pid)
    wanted = f"{first.ct_series},{second.mr_series}"
    results = search(client, "/series", {"PatientID": pid, "SeriesInstanceUID": wanted})
    assert uids_of(results, SERIES_UID) == {first.ct_series, second.mr_series}


def test_sop_instance_uid_list(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    wanted = f"{st.ct_sops[0]}\\{st.mr_sops[0]}"
    results = search(client, "/instances", {"PatientID": st.pid, "SOPInstanceUID": wanted})
    assert uids_of(results, SOP_UID) == {st.ct_sops[0], st.mr_sops[0]}


def test_integer_attributes_match(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, f"/studies/{st.study}/instances", {"InstanceNumber": "2"})
    assert uids_of(results, SOP_UID) == {st.ct_sops[1]}
    [ct] = search(client, "/series", {"PatientID": st.pid, "Modality": "CT"})
    number = value(ct, "00200011")
    results = search(client, f"/studies/{st.study}/series", {"SeriesNumber": str(number)})
    assert st.ct_series in uids_of(results, SERIES_UID)


@pytest.mark.parametrize(
    ("path", "attribute", "tag"),
    [
        ("/studies", "StudyDescription", "00081030"),
        ("/studies", "00081030", "00081030"),
        ("/instances", "InstitutionName", "00080080"),
        ("/instances", "SliceThickness", "00180050"),
    ],
)
def test_empty_matching_key_is_universal_and_returned(
    client: httpx.Client, path: str, attribute: str, tag: str
) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid)
    [result] = search(client, path, {"PatientID": pid, attribute: ""})
    assert tag in result


# ---- wildcards ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ("Wildcard^Alice", True),
        ("wildcard^alice", True),  # PN matching is case-insensitive
        ("WILD*", True),
        ("*alice", True),
        ("Wildcard^Alic?", True),
        ("wildcard^al?ce", True),
        ("*", True),
        ("Wildcard^Al", False),  # no wildcard: the whole value must match
        ("Wildcard^Alic", False),
        ("Bob*", False),
    ],
)
def test_patient_name_wildcards(client: httpx.Client, pattern: str, matches: bool) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid, PatientName="Wildcard^Alice")
    expected = {ds.StudyInstanceUID} if matches else set()
    assert study_uids(client, PatientID=pid, PatientName=pattern) == expected


def test_patient_id_wildcards_are_case_sensitive(client: httpx.Client) -> None:
    stem = f"WC{uuid.uuid4().hex.upper()}"
    ds = store_one(client, CT_SMALL, PatientID=f"{stem}XY")
    assert study_uids(client, PatientID=f"{stem}*") == {ds.StudyInstanceUID}
    assert study_uids(client, PatientID=f"{stem}X?") == {ds.StudyInstanceUID}
    assert study_uids(client, PatientID=f"*{stem[2:]}XY") == {ds.StudyInstanceUID}
    assert study_uids(client, PatientID=f"{stem.lower()}*") == set()
    assert study_uids(client, PatientID=f"{stem}x?") == set()
    assert study_uids(client, PatientID=f"{stem}?") == set()  # ? is exactly one character


def test_patient_id_exact_match_is_case_sensitive(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid)
    assert study_uids(client, PatientID=pid) == {ds.StudyInstanceUID}
    assert study_uids(client, PatientID=pid.lower()) == set()


def test_wildcard_characters_of_sql_are_literal(client: httpx.Client) -> None:
    stem = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=f"{stem}_%")
    store_one(client, CT_SMALL, PatientID=f"{stem}AB")
    assert study_uids(client, PatientID=f"{stem}_%") == {ds.StudyInstanceUID}
    assert study_uids(client, PatientID=f"{stem}_*") == {ds.StudyInstanceUID}


# ---- fuzzy matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "fuzzy", "matches"),
    [
        ("joh", "true", True),  # prefix of the given name
        ("JOH", "true", True),
        ("doe", "true", True),  # prefix of the family name
        ("john", "true", True),
        ("ohn", "true", False),  # not a prefix of any component
        ("smith", "true", False),
        ("joh", "false", False),
        ("joh", None, False),
    ],
)
def test_fuzzy_matching(client: httpx.Client, pattern: str, fuzzy: str | None, matches: bool) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid, PatientName="Doe^John")
    params = {"PatientID": pid, "PatientName": pattern}
    if fuzzy is not None:
        params["fuzzymatching"] = fuzzy
    expected = {ds.StudyInstanceUID} if matches else set()
    assert study_uids(client, **params) == expected


# ---- dates, times and date-times ---------------------------------------------------------------------


@pytest.fixture
def dated_studies(client: httpx.Client) -> tuple[str, dict[str, str]]:
    """Three studies of one patient: label -> study UID."""
    pid = unique_pid()
    when = {"early": ("20191231", "080000"), "mid": ("20200615", "123000"), "late": ("20210101", "180000")}
    uids = {}
    for label, (date, time) in when.items():
        uids[label] = store_one(
            client, CT_SMALL, PatientID=pid, StudyDate=date, StudyTime=time
        ).StudyInstanceUID
    return pid, uids


@pytest.mark.parametrize(
    ("attribute", "query", "expected"),
    [
        ("StudyDate", "20200615", {"mid"}),
        ("StudyDate", "20200101-20201231", {"mid"}),
        ("StudyDate", "20191231-20200615", {"early", "mid"}),
        ("StudyDate", "-20200101", {"early"}),
        ("StudyDate", "20200101-", {"mid", "late"}),
        ("StudyDate", "20220101-", set()),
        ("00080020", "20200101-20201231", {"mid"}),
        ("StudyTime", "123000", {"mid"}),
        ("StudyTime", "120000-130000", {"mid"}),
        ("StudyTime", "-090000", {"early"}),
        ("StudyTime", "170000-", {"late"}),
        ("StudyTime", "0800-1230", {"early", "mid"}),
        ("00080030", "120000-130000", {"mid"}),
    ],
)
def test_date_and_time_ranges(
    client: httpx.Client,
    dated_studies: tuple[str, dict[str, str]],
    attribute: str,
    query: str,
    expected: set[str],
) -> None:
    pid, uids = dated_studies
    assert study_uids(client, PatientID=pid, **{attribute: query}) == {uids[label] for label in expected}


def test_study_date_and_time_combined(
    client: httpx.Client, dated_studies: tuple[str, dict[str, str]]
) -> None:
    pid, uids = dated_studies
    found = study_uids(client, PatientID=pid, StudyDate="20190101-20201231", StudyTime="-100000")
    assert found == {uids["early"]}


@pytest.mark.parametrize("query", ["2020", "202006"])
def test_truncated_date_is_refused_or_matched_as_a_period(
    client: httpx.Client, dated_studies: tuple[str, dict[str, str]], query: str
) -> None:
    # A DA value is YYYYMMDD (PS3.5 6.2): a shorter one is either malformed (400) or, leniently, the
    # whole period it names. Silently matching nothing is neither.
    pid, uids = dated_studies
    response = client.get("/studies", params={"PatientID": pid, "StudyDate": query})
    if response.status_code == 400:
        assert_bad_request(response, "StudyDate")
        return
    assert response.status_code == 200
    assert uids_of(response.json(), STUDY_UID) == {uids["mid"]}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("20200615-20200616", {0, 1}),
        ("20200616120000-", {2}),
        ("-20200615235959", {0}),
        ("20200615101010-20200615101010", {0}),
        ("20200616101010.5", {1}),
    ],
)
def test_datetime_range_without_index_column(client: httpx.Client, query: str, expected: set[int]) -> None:
    pid = unique_pid()
    stamps = ("20200615101010", "20200616101010.5", "20210101000000")
    sops = [store_one(client, CT_SMALL, PatientID=pid, AcquisitionDateTime=s).SOPInstanceUID for s in stamps]
    results = search(client, "/instances", {"PatientID": pid, "AcquisitionDateTime": query})
    assert uids_of(results, SOP_UID) == {sops[i] for i in expected}


# ---- attributes without an index column ---------------------------------------------------------------


@pytest.fixture
def two_places(client: httpx.Client) -> tuple[str, Dataset, Dataset]:
    """Two studies of one patient that differ in series- and instance-level attributes only."""
    pid = unique_pid()
    chest = store_one(
        client,
        CT_SMALL,
        PatientID=pid,
        InstitutionName="QIDO GENERAL",
        BodyPartExamined="CHEST",
        ImageType="ORIGINAL\\PRIMARY\\AXIAL",
    )
    head = store_one(
        client,
        CT_SMALL,
        PatientID=pid,
        InstitutionName="OTHER PLACE",
        BodyPartExamined="HEAD",
        ImageType="DERIVED\\SECONDARY",
    )
    return pid, chest, head


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"InstitutionName": "QIDO GENERAL"}, "chest"),
        ({"InstitutionName": "QIDO*"}, "chest"),
        ({"InstitutionName": "*PLACE"}, "head"),
        ({"00080080": "OTHER PLACE"}, "head"),
        ({"InstitutionName": "qido general"}, None),  # LO matching is case-sensitive
        ({"BodyPartExamined": "HEAD"}, "head"),
        ({"BodyPartExamined": "CHES?"}, "chest"),
        ({"BodyPartExamined": "HEAD", "InstitutionName": "QIDO GENERAL"}, None),
    ],
)
def test_series_match_on_unindexed_attributes(
    client: httpx.Client,
    two_places: tuple[str, Dataset, Dataset],
    params: dict[str, str],
    expected: str | None,
) -> None:
    pid, chest, head = two_places
    results = search(client, "/series", {"PatientID": pid, **params})
    wanted = {"chest": {chest.SeriesInstanceUID}, "head": {head.SeriesInstanceUID}, None: set()}[expected]
    assert uids_of(results, SERIES_UID) == wanted


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"ImageType": "DERIVED"}, "head"),  # a multi-valued attribute matches on any of its values
        ({"ImageType": "AXIAL"}, "chest"),
        ({"00080008": "SECONDARY"}, "head"),
        ({"BodyPartExamined": "CHEST"}, "chest"),
        ({"InstitutionName": "OTHER*"}, "head"),
        ({"ImageType": "LOCALIZER"}, None),
    ],
)
def test_instance_match_on_unindexed_attributes(
    client: httpx.Client,
    two_places: tuple[str, Dataset, Dataset],
    params: dict[str, str],
    expected: str | None,
) -> None:
    pid, chest, head = two_places
    results = search(client, "/instances", {"PatientID": pid, **params})
    wanted = {"chest": {chest.SOPInstanceUID}, "head": {head.SOPInstanceUID}, None: set()}[expected]
    assert uids_of(results, SOP_UID) == wanted


def test_unindexed_match_inside_a_study(
    client: httpx.Client, two_places: tuple[str, Dataset, Dataset]
) -> None:
    _pid, chest, _head = two_places
    assert search(client, f"/studies/{chest.StudyInstanceUID}/series", {"BodyPartExamined": "HEAD"}) == []
    results = search(client, f"/studies/{chest.StudyInstanceUID}/instances", {"InstitutionName": "QIDO*"})
    assert uids_of(results, SOP_UID) == {chest.SOPInstanceUID}


# ---- includefield --------------------------------------------------------------------------------------


def test_study_description_needs_includefield(client: httpx.Client) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid, StudyDescription="Included Study")
    [plain] = search(client, "/studies", {"PatientID": pid})
    assert "00081030" not in plain
    [by_keyword] = search(client, "/studies", {"PatientID": pid, "includefield": "StudyDescription"})
    [by_tag] = search(client, "/studies", {"PatientID": pid, "includefield": "00081030"})
    assert value(by_keyword, "00081030") == value(by_tag, "00081030") == "Included Study"


@pytest.mark.parametrize(
    "params",
    [
        [
            ("includefield", "InstitutionName"),
            ("includefield", "00080070"),
            ("includefield", "SliceThickness"),
        ],
        [("includefield", "InstitutionName,00080070,SliceThickness")],
        [("includefield", "InstitutionName, 00080070"), ("includefield", "00180050")],
    ],
    ids=["repeated", "comma-separated", "both"],
)
def test_includefield_forms(client: httpx.Client, params: list[tuple[str, str]]) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid)
    [result] = search(client, "/instances", [("PatientID", pid), *params])
    assert value(result, "00080080") == "JFK IMAGING CENTER"
    assert value(result, "00080070") == "GE MEDICAL SYSTEMS"
    assert float(value(result, "00180050")) == 5.0


def test_includefield_all(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid)
    [plain] = search(client, "/instances", {"PatientID": pid})
    [everything] = search(client, "/instances", {"PatientID": pid, "includefield": "all"})
    assert set(plain) < set(everything)
    for keyword in ("InstitutionName", "Manufacturer", "SliceThickness", "KVP", "ImageType"):
        tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
        assert tag in everything, keyword
    assert values(everything, "00080008") == list(ds.ImageType)


def test_includefield_all_at_study_level_keeps_computed_attributes(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    [result] = search(client, "/studies", {"PatientID": st.pid, "includefield": "all"})
    assert value(result, NUM_STUDY_SERIES) == 2
    assert value(result, NUM_STUDY_INSTANCES) == 3
    assert set(values(result, MODALITIES_IN_STUDY)) == {"CT", "MR"}


# ---- paging ------------------------------------------------------------------------------------------


@pytest.fixture
def five_studies(client: httpx.Client) -> tuple[str, set[str]]:
    pid = unique_pid()
    files = [new_uids(CT_SMALL, PatientID=pid, InstitutionName="PAGING") for _ in range(5)]
    return pid, {ds.StudyInstanceUID for ds in store(client, *files)}


def test_limit_and_offset_page_through_everything(
    client: httpx.Client, five_studies: tuple[str, set[str]]
) -> None:
    pid, uids = five_studies
    pages = []
    for offset in (0, 2, 4):
        pages.append(
            uids_of(
                search(client, "/studies", {"PatientID": pid, "limit": "2", "offset": str(offset)}), STUDY_UID
            )
        )
    assert [len(p) for p in pages] == [2, 2, 1]
    assert set().union(*pages) == uids


def test_offset_past_the_end_is_empty(client: httpx.Client, five_studies: tuple[str, set[str]]) -> None:
    pid, _uids = five_studies
    assert search(client, "/studies", {"PatientID": pid, "offset": "5"}) == []


@pytest.mark.parametrize(
    ("limit", "offset", "cut"),
    [
        ("2", "0", True),
        ("2", "2", True),
        ("2", "4", False),
        ("4", "0", True),
        ("5", "0", False),
        ("10", "0", False),
        (None, None, False),
    ],
)
def test_warning_header_only_when_results_are_cut(
    client: httpx.Client, five_studies: tuple[str, set[str]], limit: str | None, offset: str | None, cut: bool
) -> None:
    pid, _uids = five_studies
    params = {"PatientID": pid}
    if limit is not None:
        params["limit"] = limit
    if offset is not None:
        params["offset"] = offset
    response = client.get("/studies", params=params)
    assert response.status_code == 200
    if cut:
        assert response.headers.get("warning", "").startswith("299 "), response.headers
    else:
        assert "warning" not in response.headers


@pytest.mark.parametrize(("limit", "cut"), [("2", True), ("5", False)])
def test_warning_header_on_unindexed_match(
    client: httpx.Client, five_studies: tuple[str, set[str]], limit: str, cut: bool
) -> None:
    pid, _uids = five_studies
    response = client.get("/series", params={"PatientID": pid, "InstitutionName": "PAGING", "limit": limit})
    assert response.status_code == 200
    assert len(response.json()) == min(int(limit), 5)
    assert ("warning" in response.headers) is cut


# ---- returned attributes -------------------------------------------------------------------------------


def _expected_defaults(defaults: tuple[str, ...], computed: tuple[str, ...], ds: Dataset) -> set[str]:
    # Attributes without a value are left out of results.
    present = {f"{elem.tag:08X}" for elem in ds if not elem.is_empty}
    return {t for t in defaults if t in computed or t in present or t == "00080056"}


def test_study_default_attributes(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid)
    [result] = search(client, "/studies", {"PatientID": pid})
    missing = _expected_defaults(STUDY_DEFAULTS, STUDY_COMPUTED, ds) - set(result)
    assert not missing
    assert value(result, "00100010")["Alphabetic"] == str(ds.PatientName)
    assert value(result, "00080020") == ds.StudyDate
    assert value(result, "00080056") == "ONLINE"


def test_series_default_attributes(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, EMRI_SMALL, PatientID=pid, SeriesDescription="Enhanced MR")
    [result] = search(client, f"/studies/{ds.StudyInstanceUID}/series")
    missing = _expected_defaults(SERIES_DEFAULTS, SERIES_COMPUTED, ds) - set(result)
    assert not missing
    assert value(result, "00080060") == "MR"
    assert value(result, "0008103E") == ds.SeriesDescription
    assert int(value(result, "00200011")) == int(ds.SeriesNumber)


def test_instance_default_attributes(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, EMRI_SMALL, PatientID=pid)
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances"
    [result] = search(client, path)
    missing = _expected_defaults(INSTANCE_DEFAULTS, INSTANCE_COMPUTED, ds) - set(result)
    assert not missing
    assert value(result, "00080016") == ds.SOPClassUID
    assert int(value(result, "00280008")) == 10
    assert value(result, "00280010") == 64 and value(result, "00280011") == 64
    assert value(result, "00280100") == 16
    assert value(result, "00080056") == "ONLINE"


def test_unscoped_instance_search_describes_study_and_series(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid)
    [result] = search(client, "/instances", {"PatientID": pid})
    assert value(result, STUDY_UID) == ds.StudyInstanceUID
    assert value(result, SERIES_UID) == ds.SeriesInstanceUID
    assert value(result, "00080060") == "CT"
    assert value(result, "00100020") == pid


# PS3.18 10.6.3.3.1 (Table 10.6.3-3): the Study attributes, returned with every result of a search for
# all series or all instances; Retrieve URL aside, as each result has its own.
STUDY_VALUES = {
    "PatientName": "Parent^Attributes",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "StudyDate": "20210304",
    "StudyTime": "101112",
    "AccessionNumber": "ACC-PARENT",
    "StudyID": "SID7",
    "ReferringPhysicianName": "Referrer^Ruth",
}
STUDY_RESULT_TAGS = (
    "00080020",
    "00080030",
    "00080050",
    "00080056",
    "00080061",
    "00080090",
    "00100010",
    "00100020",
    "00100030",
    "00100040",
    "0020000D",
    "00200010",
    "00201206",
    "00201208",
)
# PS3.18 10.6.3.3.2 (Table 10.6.3-4): the Series attributes, returned with instances of any series.
SERIES_RESULT_TAGS = ("00080060", "0008103E", "0020000E", "00200011", "00201209", "00400244", "00400245")


def store_parent_study(client: httpx.Client) -> TwoSeriesStudy:
    pid = unique_pid("PARENT")
    st = TwoSeriesStudy(pid, generate_uid(), generate_uid(), generate_uid())
    common = {"study": st.study, "PatientID": pid, **STUDY_VALUES}
    series = {
        "SeriesDescription": "Parent series",
        "PerformedProcedureStepStartDate": "20210304",
        "PerformedProcedureStepStartTime": "101500",
    }
    stored = store(
        client,
        new_uids(CT_SMALL, series=st.ct_series, SeriesNumber="3", InstanceNumber="1", **series, **common),
        new_uids(CT_SMALL, series=st.ct_series, SeriesNumber="3", InstanceNumber="2", **series, **common),
        new_uids(MR_SMALL, series=st.mr_series, SeriesNumber="4", **series, **common),
    )
    st.ct_sops = [ds.SOPInstanceUID for ds in stored[:2]]
    st.mr_sops = [stored[2].SOPInstanceUID]
    return st


def assert_study_attributes(result: Result, st: TwoSeriesStudy) -> None:
    missing = [t for t in STUDY_RESULT_TAGS if t not in result]
    assert not missing, f"Study attributes missing: {missing}"
    assert value(result, "00100010") == {"Alphabetic": STUDY_VALUES["PatientName"]}
    assert value(result, "00100020") == st.pid
    assert value(result, "00100030") == STUDY_VALUES["PatientBirthDate"]
    assert value(result, "00100040") == STUDY_VALUES["PatientSex"]
    assert value(result, "00080020") == STUDY_VALUES["StudyDate"]
    assert value(result, "00080030") == STUDY_VALUES["StudyTime"]
    assert value(result, "00080050") == STUDY_VALUES["AccessionNumber"]
    assert value(result, "00200010") == STUDY_VALUES["StudyID"]
    assert value(result, "00080090") == {"Alphabetic": STUDY_VALUES["ReferringPhysicianName"]}
    assert value(result, STUDY_UID) == st.study
    assert set(values(result, MODALITIES_IN_STUDY)) == {"CT", "MR"}
    assert int(value(result, NUM_STUDY_SERIES)) == 2
    assert int(value(result, NUM_STUDY_INSTANCES)) == 3


def assert_series_attributes(result: Result, st: TwoSeriesStudy) -> None:
    missing = [t for t in SERIES_RESULT_TAGS if t not in result]
    assert not missing, f"Series attributes missing: {missing}"
    ct = value(result, SERIES_UID) == st.ct_series
    assert value(result, "00080060") == ("CT" if ct else "MR")
    assert int(value(result, "00200011")) == (3 if ct else 4)
    assert int(value(result, NUM_SERIES_INSTANCES)) == (2 if ct else 1)
    assert value(result, "0008103E") == "Parent series"
    assert value(result, "00400244") == "20210304"


def test_all_series_carry_their_study_attributes(client: httpx.Client, server: Server) -> None:
    st = store_parent_study(client)
    results = search(client, "/series", {"PatientID": st.pid})
    assert len(results) == 2
    for result in results:
        assert_study_attributes(result, st)
        se = value(result, SERIES_UID)
        assert value(result, RETRIEVE_URL) == f"{server.root}/studies/{st.study}/series/{se}"
        assert SOP_UID not in result


def test_all_instances_carry_their_study_and_series_attributes(client: httpx.Client) -> None:
    st = store_parent_study(client)
    results = search(client, "/instances", {"PatientID": st.pid})
    assert uids_of(results, SOP_UID) == st.all_sops
    for result in results:
        assert_study_attributes(result, st)
        assert_series_attributes(result, st)


def test_instances_of_a_study_carry_their_series_attributes(client: httpx.Client) -> None:
    st = store_parent_study(client)
    results = search(client, f"/studies/{st.study}/instances")
    assert uids_of(results, SOP_UID) == st.all_sops
    for result in results:
        assert_series_attributes(result, st)


def test_parent_attributes_with_a_matching_key_on_the_parent(client: httpx.Client) -> None:
    st = store_parent_study(client)
    results = search(
        client, "/series", {"AccessionNumber": STUDY_VALUES["AccessionNumber"], "PatientID": st.pid}
    )
    assert len(results) == 2
    for result in results:
        assert_study_attributes(result, st)


def test_study_attributes_on_request_in_a_study_s_series(client: httpx.Client) -> None:
    st = store_parent_study(client)
    results = search(client, f"/studies/{st.study}/series", {"includefield": "PatientName,ModalitiesInStudy"})
    for result in results:
        assert value(result, "00100010") == {"Alphabetic": STUDY_VALUES["PatientName"]}
        assert set(values(result, MODALITIES_IN_STUDY)) == {"CT", "MR"}


# ---- attributes without a value -----------------------------------------------------------------------

NO_MODALITY = (PYDICOM_TEST_FILES / "SC_jpeg_no_color_transform.dcm").read_bytes()


@pytest.mark.parametrize("path", ["/studies", "/series", "/instances"])
def test_attributes_without_a_value_are_left_out(client: httpx.Client, path: str) -> None:
    """A study without Modality (pydicom's SC_jpeg_no_color_transform) has no ModalitiesInStudy: OHIF 3.13
    reads `ModalitiesInStudy.Value.length`, so an empty attribute would break its whole study list."""
    assert "Modality" not in dataset(NO_MODALITY)
    pid = unique_pid("EMPTY")
    store_one(client, NO_MODALITY, PatientID=pid)
    store_one(client, CT_SMALL, PatientID=pid, AccessionNumber="")
    for params in (
        {"PatientID": pid},
        {"PatientID": pid, "includefield": "all"},
        {"PatientID": pid, "AccessionNumber": "", "Modality": "", "ModalitiesInStudy": ""},
    ):
        results = search(client, path, params)
        assert len(results) == 2
        for result in results:
            empty = [
                tag
                for tag, element in result.items()
                if not element.get("Value") and "BulkDataURI" not in element and "InlineBinary" not in element
            ]
            assert not empty, f"attributes without a value in {path}: {empty}"
            assert "00080050" not in result
    [study] = [r for r in search(client, "/studies", {"PatientID": pid}) if "00080061" not in r]
    assert int(value(study, NUM_STUDY_INSTANCES)) == 1


# ---- computed attributes ----------------------------------------------------------------------------


def test_study_counts_and_modalities(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    [result] = search(client, "/studies", {"PatientID": st.pid})
    assert int(value(result, NUM_STUDY_SERIES)) == 2
    assert int(value(result, NUM_STUDY_INSTANCES)) == 3
    assert set(values(result, MODALITIES_IN_STUDY)) == {"CT", "MR"}


def test_series_related_instances(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    results = search(client, f"/studies/{st.study}/series")
    counts = {value(r, SERIES_UID): int(value(r, NUM_SERIES_INSTANCES)) for r in results}
    assert counts == {st.ct_series: 2, st.mr_series: 1}


def test_counts_follow_later_stores(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    store(
        client,
        new_uids(MR_SMALL, study=st.study, series=st.mr_series, PatientID=st.pid, PatientName="Two^Series"),
    )
    [study] = search(client, "/studies", {"PatientID": st.pid})
    assert int(value(study, NUM_STUDY_INSTANCES)) == 4
    mr = search(client, f"/studies/{st.study}/series", {"SeriesInstanceUID": st.mr_series})
    assert int(value(mr[0], NUM_SERIES_INSTANCES)) == 2


@pytest.mark.parametrize("name", ["00080062", "SOPClassesInStudy"])
def test_sop_classes_in_study_when_requested(client: httpx.Client, name: str) -> None:
    st = store_two_series_study(client)
    [plain] = search(client, "/studies", {"PatientID": st.pid})
    assert SOP_CLASSES_IN_STUDY not in plain
    [result] = search(client, "/studies", {"PatientID": st.pid, "includefield": name})
    assert set(values(result, SOP_CLASSES_IN_STUDY)) == {CT_IMAGE_STORAGE, MR_IMAGE_STORAGE}


@pytest.mark.parametrize(
    ("modality", "expected"),
    [("CT", {"both", "ct_only"}), ("MR", {"both"}), ("US", set()), ("C?", {"both", "ct_only"})],
)
def test_modalities_in_study_as_matching_key(client: httpx.Client, modality: str, expected: set[str]) -> None:
    pid = unique_pid()
    both = store_two_series_study(client, pid).study
    ct_only = store_one(client, CT_SMALL, PatientID=pid).StudyInstanceUID
    labels = {"both": both, "ct_only": ct_only}
    for name in ("ModalitiesInStudy", "00080061"):
        assert study_uids(client, PatientID=pid, **{name: modality}) == {labels[e] for e in expected}


def test_modalities_in_study_match_returns_all_modalities(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    [result] = search(client, "/studies", {"PatientID": st.pid, "ModalitiesInStudy": "MR"})
    assert set(values(result, MODALITIES_IN_STUDY)) == {"CT", "MR"}


# ---- RetrieveURL ----------------------------------------------------------------------------------------


def test_retrieve_urls_are_absolute(client: httpx.Client, server: Server) -> None:
    st = store_two_series_study(client)
    [study] = search(client, "/studies", {"PatientID": st.pid})
    assert value(study, RETRIEVE_URL) == f"{server.root}/studies/{st.study}"
    for result in search(client, f"/studies/{st.study}/series"):
        se = value(result, SERIES_UID)
        assert value(result, RETRIEVE_URL) == f"{server.root}/studies/{st.study}/series/{se}"
    for result in search(client, "/instances", {"PatientID": st.pid}):
        se, sop = value(result, SERIES_UID), value(result, SOP_UID)
        assert value(result, RETRIEVE_URL) == f"{server.root}/studies/{st.study}/series/{se}/instances/{sop}"
        assert httpx.URL(value(result, RETRIEVE_URL)).is_absolute_url


def test_retrieve_url_leads_to_the_study(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    [study] = search(client, "/studies", {"PatientID": st.pid})
    response = client.get(value(study, RETRIEVE_URL) + "/metadata")
    assert response.status_code == 200
    assert {value(item, SOP_UID) for item in response.json()} == st.all_sops


# ---- errors ----------------------------------------------------------------------------------------

MALFORMED: list[tuple[str, dict[str, str], str]] = [
    ("/studies", {"FooBar": "1"}, "FooBar"),
    ("/studies", {"StudyDate": "2020-13"}, "StudyDate"),
    ("/studies", {"StudyDate": "20200101-20201231-20211231"}, "StudyDate"),
    ("/studies", {"StudyDate": "yesterday"}, "StudyDate"),
    ("/studies", {"StudyDate": "20201301"}, "StudyDate"),  # there is no 13th month
    ("/studies", {"limit": "abc"}, "limit"),
    ("/studies", {"limit": "-1"}, "limit"),
    ("/studies", {"offset": "-3"}, "offset"),
    ("/studies", {"offset": "x"}, "offset"),
    ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
    ("/studies", {"StudyInstanceUID": "not-a-uid"}, "UID"),
    ("/studies", {"StudyInstanceUID": "1.2.3,abc"}, "UID"),
    ("/series", {"SeriesInstanceUID": "1.2.x"}, "UID"),
    ("/instances", {"SOPInstanceUID": "1..2"}, "UID"),
    ("/series", {"SeriesNumber": "abc"}, "SeriesNumber"),
]


@pytest.mark.parametrize(
    ("path", "params", "mention"),
    MALFORMED,
    ids=[f"{path}?{urlencode(params)}" for path, params, _ in MALFORMED],
)
def test_malformed_query_is_400(
    client: httpx.Client, path: str, params: dict[str, str], mention: str
) -> None:
    assert_bad_request(client.get(path, params=params), mention)


@pytest.mark.parametrize(
    "path",
    ["/studies/not-a-uid/series", "/studies/not-a-uid/instances", "/studies/1.2.3/series/x.y/instances"],
)
def test_malformed_uid_in_path_is_400(client: httpx.Client, path: str) -> None:
    assert_bad_request(client.get(path), "UID")


@pytest.mark.parametrize("suffix", ["series", "instances", "series/{series}/instances"])
def test_query_inside_unknown_study_is_404(client: httpx.Client, suffix: str) -> None:
    path = f"/studies/{generate_uid()}/" + suffix.format(series=generate_uid())
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["error"]


def test_query_inside_unknown_series_of_known_study_is_404(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    response = client.get(f"/studies/{st.study}/series/{generate_uid()}/instances")
    assert response.status_code == 404


def test_query_with_series_of_another_study_is_404(client: httpx.Client) -> None:
    first = store_two_series_study(client)
    second = store_two_series_study(client)
    response = client.get(f"/studies/{first.study}/series/{second.ct_series}/instances")
    assert response.status_code == 404


def test_no_match_inside_known_study_is_empty(client: httpx.Client) -> None:
    st = store_two_series_study(client)
    assert search(client, f"/studies/{st.study}/series", {"Modality": "US"}) == []
    assert search(client, f"/studies/{st.study}/instances", {"InstanceNumber": "99"}) == []


@pytest.mark.parametrize("path", ["/studies", "/series", "/instances"])
def test_empty_result_is_200_with_empty_list(client: httpx.Client, path: str) -> None:
    response = client.get(path, params={"PatientID": unique_pid("NOBODY")})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(DICOM_JSON)
    assert response.json() == []


# ---- what viewers send ----------------------------------------------------------------------------------

OHIF_STUDY_LIST = (
    "/studies?PatientName=*&limit=101&offset=0&fuzzymatching=false"
    "&includefield=00081030,00080060,00080090,00100030"
)


def test_ohif_study_list_query(client: httpx.Client) -> None:
    store_one(client, CT_SMALL, PatientID=unique_pid())
    response = client.get(OHIF_STUDY_LIST, headers={"Accept": DICOM_JSON})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    results = response.json()
    assert 1 <= len(results) <= 101
    assert all(STUDY_UID in r for r in results)


def test_ohif_includefields_are_returned(client: httpx.Client) -> None:
    pid = unique_pid()
    store_one(
        client,
        CT_SMALL,
        PatientID=pid,
        StudyDescription="OHIF Study",
        PatientBirthDate="19700101",
        ReferringPhysicianName="Referring^Rita",
    )
    query = OHIF_STUDY_LIST + f"&PatientID={pid}"
    [result] = search(client, query, headers={"Accept": DICOM_JSON})
    assert value(result, "00081030") == "OHIF Study"
    assert value(result, "00100030") == "19700101"
    assert value(result, "00080090") == {"Alphabetic": "Referring^Rita"}


def test_accept_query_parameter_is_not_a_matching_key(client: httpx.Client) -> None:
    pid = unique_pid()
    ds = store_one(client, CT_SMALL, PatientID=pid)
    results = search(client, "/studies", {"PatientID": pid, "accept": DICOM_JSON})
    assert uids_of(results, STUDY_UID) == {ds.StudyInstanceUID}


def test_json_accept_variants(client: httpx.Client) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid)
    for accept in (DICOM_JSON, "application/json", "*/*", f"{DICOM_JSON}, */*;q=0.1", "undefined"):
        assert len(search(client, "/studies", {"PatientID": pid}, headers={"Accept": accept})) == 1


# ---- compression -----------------------------------------------------------------------------------


def test_gzip_when_asked(client: httpx.Client) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid)
    params = {"PatientID": pid, "includefield": "all"}
    response = client.get("/instances", params=params, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == "gzip"
    assert value(response.json()[0], "00100020") == pid  # httpx decoded it


def test_no_gzip_when_not_asked(client: httpx.Client) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid)
    params = {"PatientID": pid, "includefield": "all"}
    response = client.get("/instances", params=params, headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert value(response.json()[0], "00100020") == pid


def test_no_gzip_when_refused_with_q_zero(client: httpx.Client) -> None:
    pid = unique_pid()
    store_one(client, CT_SMALL, PatientID=pid)
    params = {"PatientID": pid, "includefield": "all"}
    response = client.get("/instances", params=params, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") in (None, "identity")
