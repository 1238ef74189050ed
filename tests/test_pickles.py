"""The restricted refs-pickle loader: plain data in, code execution refused, py2 decoding."""

from __future__ import annotations

import builtins
import os
import pickle

import pytest

from ppcr.data.pickles import load_refs_pickle
from ppcr.errors import DataError, UnsafePickleError
from tests.refer_fixtures import Py2Unicode, python2_pickle

RECORDS = [
    {"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "split": "train", "sent_ids": [0, 1],
     "sentences": [
         {"sent_id": 0, "sent": "the lady", "raw": "THE LADY", "tokens": ["the", "lady"]}
     ],
     "area": 12.5, "flag": True, "nothing": None, "pair": (1, 2)},
    {"ref_id": 1, "ann_id": 2**40, "image_id": 7, "split": "val", "sent_ids": [], "sentences": []},
]


def write(tmp_path, data: bytes, name: str = "refs(unc).p"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", [0, 2])
def test_python2_pickles_of_plain_records_load_unchanged(tmp_path, protocol):
    path = write(tmp_path, python2_pickle(RECORDS, protocol))
    assert load_refs_pickle(path) == RECORDS


@pytest.mark.parametrize("protocol", [0, 2, 4, pickle.HIGHEST_PROTOCOL])
def test_python3_pickles_of_plain_records_load_unchanged(tmp_path, protocol):
    path = write(tmp_path, pickle.dumps(RECORDS, protocol=protocol))
    assert load_refs_pickle(path) == RECORDS


def test_golden_python2_cpickle_bytes_with_memo_opcodes(tmp_path):
    # What Python 2's cPickle.dumps([{'sent': 'caf\xe9', 'ref_id': 3}], 2) emits: BINPUT memo
    # entries, SHORT_BINSTRING byte strings (latin-1 'café'), MARK ... SETITEMS, APPEND.
    data = (
        b"\x80\x02]q\x00}q\x01(U\x04sentq\x02U\x04caf\xe9q\x03U\x06ref_idq\x04K\x03ua."
    )
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # the default decoding really fails on these bytes
    assert load_refs_pickle(write(tmp_path, data)) == [{"sent": "café", "ref_id": 3}]


@pytest.mark.parametrize("protocol", [0, 2])
def test_latin1_byte_strings_fall_back_to_latin1(tmp_path, protocol):
    records = [{"ref_id": 1, "sentences": [{"sent": "café au lait", "raw": "Café"}]}]
    data = python2_pickle(records, protocol, str_encoding="latin1")
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)
    assert load_refs_pickle(write(tmp_path, data)) == records


@pytest.mark.parametrize("protocol", [0, 2])
def test_utf8_byte_strings_are_restored_after_latin1_fallback(tmp_path, protocol):
    records = [{"ref_id": 1, "sentences": [{"sent": "naïve café", "raw": "ascii only"}]}]
    data = python2_pickle(records, protocol, str_encoding="utf-8")
    assert pickle.loads(data, encoding="latin1")[0]["sentences"][0]["sent"] == "naÃ¯ve cafÃ©"
    assert load_refs_pickle(write(tmp_path, data)) == records


def test_python2_unicode_objects_decode_without_fallback(tmp_path):
    records = [{"sent": Py2Unicode("euro € sign"), "raw": "plain"}]
    for protocol in (0, 2):
        assert load_refs_pickle(write(tmp_path, python2_pickle(records, protocol))) == [
            {"sent": "euro € sign", "raw": "plain"}
        ]


class _Reduce:
    """Pickles as ``func(*args)``: what an attacker puts in a pickle."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _touch_source(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_os_system_payload_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = [{"ref_id": 0, "sentences": _Reduce(os.system, (f"touch {marker}",))}]
    path = write(tmp_path, pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"refused to load global \w+\.system"):
        load_refs_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_eval_payload_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps([_Reduce(builtins.eval, (_touch_source(marker),))], protocol=protocol)

    # Control: the payload is live — plain pickle would run it.
    control = tmp_path / "control"
    live = pickle.dumps([_Reduce(builtins.eval, (_touch_source(control),))], protocol=protocol)
    pickle.loads(live)
    assert control.exists()

    with pytest.raises(UnsafePickleError, match=r"builtin\w*\.eval"):
        load_refs_pickle(write(tmp_path, data))
    assert not marker.exists()


def test_getattr_chain_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    # getattr(__import__("os"), "system")("touch ...") written with protocol-0 opcodes.
    data = (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch "
        + str(marker).encode()
        + b"'\ntR."
    )
    with pytest.raises(UnsafePickleError, match=r"builtins\.getattr"):
        load_refs_pickle(write(tmp_path, data))
    assert not marker.exists()


def test_even_harmless_globals_are_refused(tmp_path):
    # A protocol-2 set needs the (__)builtin(s).set global: refused too (refs never contain sets).
    with pytest.raises(UnsafePickleError, match=r"builtin\w*\.set"):
        load_refs_pickle(write(tmp_path, pickle.dumps([{1, 2}], protocol=2)))


def test_unsafe_pickle_error_is_a_data_error_naming_the_file(tmp_path):
    path = write(tmp_path, pickle.dumps([_Reduce(builtins.eval, ("1",))], protocol=2))
    with pytest.raises(DataError) as info:
        load_refs_pickle(path)
    assert isinstance(info.value, UnsafePickleError)
    assert str(path) in info.value.message


def test_truncated_pickle_is_a_data_error(tmp_path):
    data = python2_pickle(RECORDS, 2)
    path = write(tmp_path, data[: len(data) // 2])
    with pytest.raises(DataError, match="is truncated or not a pickle") as info:
        load_refs_pickle(path)
    assert not isinstance(info.value, UnsafePickleError)


@pytest.mark.parametrize("data", [b"", b'{"refs": []}', b"\x80\x02\xff\xfe garbage"])
def test_non_pickle_files_are_data_errors(tmp_path, data):
    with pytest.raises(DataError, match="is truncated or not a pickle"):
        load_refs_pickle(write(tmp_path, data))


def test_missing_pickle_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"refs pickle not found: .*refs\(umd\)\.p"):
        load_refs_pickle(tmp_path / "refs(umd).p")


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"ref_id": 1}, "holds a dict, expected a list"),
        ([{"ref_id": 1}, 5], "record 1 is a int, expected a dict"),
    ],
)
def test_payload_must_be_a_list_of_dicts(tmp_path, payload, message):
    with pytest.raises(DataError, match=message):
        load_refs_pickle(write(tmp_path, python2_pickle(payload, 2)))
