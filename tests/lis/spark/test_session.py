"""The local-mode driver heap: a third of the machine's memory, from 4g to 16g."""
from __future__ import annotations

from lis.spark.session import default_driver_memory

GIB = 2**30


def test_the_driver_heap_is_a_third_of_the_machine_within_4g_and_16g():
    assert default_driver_memory(24 * GIB) == "8g"      # this machine: the 74M run's setting
    assert default_driver_memory(8 * GIB) == "4g"
    assert default_driver_memory(256 * GIB) == "16g"


def test_this_machine_gets_a_heap_in_range():
    assert 4 <= int(default_driver_memory()[:-1]) <= 16
