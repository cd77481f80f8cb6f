"""RFC 3339 texts: the quick path through the C parser (``2024-01-07T18:25:20[.f]Z``) gives what
the reading by parts gives, for any text, written well or not (bridges/timestamps.py)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.timestamps import TimestampError, _by_parts, parse_rfc3339, parse_timestamp


def _two(low: int = 0, high: int = 99) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


_written = st.builds(
    lambda year, month, day, sep, hour, minute, second, fraction, zone: (
        f"{year:04d}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{zone}"),
    st.integers(0, 9999), _two(0, 13), _two(0, 32), st.sampled_from("Tt "), _two(0, 25), _two(0, 61), _two(0, 61),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=11).map(lambda d: "." + d),
              st.just(",5"), st.just(".٣")),
    st.sampled_from(["Z", "z", "+02:00", "-0530", "+00", "", "+24:00", "Z ", "ZZ", "+00:00", "-00:00", "+23:59",
                     "-12:60", "+99:99", "+05:30"]),
)


@settings(max_examples=3000, deadline=None)
@given(_written | st.text(alphabet="0123456789-:.TZz+ ٣W", max_size=32))
def test_the_quick_path_reads_what_the_reading_by_parts_reads(text):
    def outcome(read):
        try:
            return "read", read(text)
        except TimestampError as exc:
            return "refused", str(exc)

    assert outcome(parse_rfc3339) == outcome(_by_parts)


def test_the_common_forms_to_the_nanosecond():
    assert parse_timestamp("2019-05-15T15:20:53Z") == 1_557_933_653 * 10**9
    assert parse_timestamp("2017-06-26T18:41:00.9584103Z") == 1_498_502_460_958_410_300  # Azure's seven digits
    assert parse_timestamp("2017-06-26T18:41:00.123456789Z") == 1_498_502_460_123_456_789
    assert parse_timestamp("2019-05-15T17:20:53+02:00") == 1_557_933_653 * 10**9
