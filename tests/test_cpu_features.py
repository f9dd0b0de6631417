"""The CPU description that benchmark tables carry."""

from qcompile.cpu_features import _amd_core, cpu_flags, describe_cpu


def test_amd_core_generation_from_the_family():
    assert _amd_core("AuthenticAMD", "25", frozenset({"avx2"})) == "Zen 3"
    assert _amd_core("AuthenticAMD", "25", frozenset({"avx2", "avx512f"})) == "Zen 4"
    assert _amd_core("AuthenticAMD", "26", frozenset({"avx2", "avx512f"})) == "Zen 5"
    assert _amd_core("GenuineIntel", "6", frozenset({"avx2"})) is None
    assert _amd_core("AuthenticAMD", "", frozenset()) is None


def test_description_names_the_instruction_sets_this_cpu_has():
    text = describe_cpu()
    assert ("no AVX2" not in text) == ("avx2" in cpu_flags())
    assert ("AVX-512 VNNI" in text) == ("avx512_vnni" in cpu_flags())
