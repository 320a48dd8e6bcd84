# What the NixOS test driver puts in a test script's globals, typed for mypy. scripts/check-nix
# prepends this (and `<node>: QemuMachine` for each node) to every VM test's testScript and runs
# mypy over the result, as the driver does with its own prelude when it builds a test; pyflakes
# gets the same names as builtins. Signatures follow the driver's Machine class for the methods
# cc-ci's tests use or are likely to; a method missing here fails the check, add it then.
from typing import Any, Callable, ContextManager


def _driver_only() -> Any:
    raise NotImplementedError("type information only: the NixOS test driver provides this")


class QemuMachine:
    name: str

    def start(self) -> None:
        return _driver_only()

    def shutdown(self) -> None:
        return _driver_only()

    def crash(self) -> None:
        return _driver_only()

    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: int | None = 900,
    ) -> tuple[int, str]:
        return _driver_only()

    def succeed(self, *commands: str, timeout: int | None = None) -> str:
        return _driver_only()

    def fail(self, *commands: str, timeout: int | None = None) -> str:
        return _driver_only()

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str:
        return _driver_only()

    def wait_until_fails(self, command: str, timeout: int = 900) -> str:
        return _driver_only()

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: int = 900) -> None:
        return _driver_only()

    def wait_for_file(self, filename: str, timeout: int = 900) -> None:
        return _driver_only()

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None:
        return _driver_only()

    def wait_for_closed_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None:
        return _driver_only()

    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]:
        return _driver_only()

    def get_unit_info(self, unit: str, user: str | None = None) -> dict[str, str]:
        return _driver_only()

    def copy_from_host(self, source: str, target: str) -> None:
        return _driver_only()

    def copy_from_vm(self, source: str, target_dir: str = "") -> None:
        return _driver_only()

    def log(self, msg: str) -> None:
        return _driver_only()


start_all: Callable[[], None]
subtest: Callable[[str], ContextManager[None]]
retry: Callable[..., None]
test_script: Callable[[], None]
machines: list[QemuMachine]
run_tests: Callable[[], None]
join_all: Callable[[], None]
serial_stdout_off: Callable[[], None]
serial_stdout_on: Callable[[], None]
polling_condition: Callable[..., Any]
log: Any
driver: Any
vlans: list[Any]
create_machine: Callable[..., QemuMachine]
