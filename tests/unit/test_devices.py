"""Default memory budget inputs: a container's cgroup memory limit caps host RAM."""

import psutil

from megaload.devices import cgroup_memory_limit, device_memory_bytes


def _files(tmp_path, **contents):
    paths = []
    for name, text in contents.items():
        path = tmp_path / name
        path.write_text(text)
        paths.append(str(path))
    return tuple(paths)


def test_cgroup_v2_limit(tmp_path):
    assert cgroup_memory_limit(_files(tmp_path, v2="8589934592\n")) == 8 * 1024**3


def test_cgroup_v2_without_limit(tmp_path):
    assert cgroup_memory_limit(_files(tmp_path, v2="max\n")) is None


def test_cgroup_v1_unlimited_is_a_huge_number(tmp_path):
    assert cgroup_memory_limit(_files(tmp_path, v1="9223372036854771712\n")) is None


def test_first_existing_file_decides(tmp_path):
    files = (str(tmp_path / "absent"),) + _files(tmp_path, v1="1073741824")
    assert cgroup_memory_limit(files) == 1024**3


def test_no_cgroup_files(tmp_path):
    assert cgroup_memory_limit((str(tmp_path / "absent"),)) is None


def test_cpu_memory_is_the_container_limit_when_lower_than_ram(tmp_path):
    ram = psutil.virtual_memory().total
    assert device_memory_bytes("cpu", cgroup_files=_files(tmp_path, v2="1073741824\n")) == min(ram, 1024**3)
    assert device_memory_bytes("cpu", cgroup_files=_files(tmp_path, v2b=f"{ram * 4}\n")) == ram
    assert device_memory_bytes("cpu", cgroup_files=_files(tmp_path, v2c="max\n")) == ram
