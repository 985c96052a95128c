"""The versions and machine written beside a run's numbers."""

from dataclasses import dataclass

from chatforge import environment
from chatforge.config import load_config, opt, save_config

VERSION_KEYS = ("python", "chatforge", "torch", "transformers", "tokenizers", "peft", "safetensors", "numpy")
MACHINE_KEYS = ("cpu", "cpu_family", "cpu_model", "cores", "torch_threads", "platform", "gpu")


def assert_filled(found: dict, keys: tuple) -> None:
    """Every key there, each value a non-empty string (so two reports compare as text)."""
    assert set(keys) <= set(found), set(keys) - set(found)
    assert all(isinstance(value, str) and value for value in found.values()), found


def test_versions_name_the_packages_that_move_the_numbers():
    found = environment.versions()
    assert_filled(found, VERSION_KEYS)
    assert found["torch"].startswith("2.") and found["chatforge"] == environment.chatforge.__version__
    assert environment.versions_line().startswith(f"python {found['python']}, chatforge ")


def test_machine_names_the_cpu_threads_and_gpu():
    assert_filled(environment.machine(), MACHINE_KEYS)


def test_cpuinfo_reads_the_first_processor_only(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
                    "model name\t: Intel(R) Xeon(R) Platinum 8581C\nflags\t\t:\n\nprocessor\t: 1\nmodel\t\t: 1\n")
    assert environment.cpuinfo(str(path)) == {"processor": "0", "vendor_id": "GenuineIntel", "cpu family": "6",
                                              "model": "207", "model name": "Intel(R) Xeon(R) Platinum 8581C"}
    assert environment.cpuinfo(str(tmp_path / "absent")) == {}  # macOS: machine() falls back to platform


@dataclass
class Small:
    steps: int = opt(3, "steps")


def test_a_saved_config_names_its_versions_and_still_loads(tmp_path):
    save_config(Small(steps=5), tmp_path / "config.yaml")
    first = (tmp_path / "config.yaml").read_text().splitlines()[0]
    assert first == f"# ran with {environment.versions_line()}"
    assert load_config(Small, tmp_path / "config.yaml") == Small(steps=5)
