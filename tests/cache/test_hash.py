"""The prefix index's SipHash-2-4-128 against the reference test vectors."""

from blendrt import _core

KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)  # bytes 00..0f, little-endian


def digest(message: bytes) -> str:
    lo, hi = _core.siphash128(message, *KEY)
    return (lo.to_bytes(8, "little") + hi.to_bytes(8, "little")).hex()


def test_reference_vectors() -> None:
    # From the SipHash reference implementation's vectors_sip128 (message i = bytes 0..i-1).
    assert digest(b"") == "a3817f04ba25a8e66df67214c7550293"
    assert digest(bytes([0])) == "da87c1d86b99af44347659119b22fc45"
    assert digest(bytes(range(15))) == "5493e99933b0a8117e08ec0f97cfc3d9"


def test_key_changes_digest() -> None:
    assert _core.siphash128(b"abc", 1, 2) != _core.siphash128(b"abc", 1, 3)
