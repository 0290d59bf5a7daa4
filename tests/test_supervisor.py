"""The supervisor of `fervid up` (fervid/supervisor.py) with real worker processes."""

from __future__ import annotations

from pathlib import Path

from fervid.supervisor import ProcessSpec, Supervisor

NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens: the worker waits for it until stopped


def test_a_worker_stopped_while_starting_exits_0(tmp_path: Path) -> None:
    """`fervid up` may stop a worker that is still starting (the run drained or was interrupted right after a
    restart): SIGTERM then comes before the worker's command could install a handler. It exits 0 all the same, as
    a worker stopped later does, once it can take the signal: not killed by it (-15), nor failing an import it
    interrupted (1). Here it comes as each one starts."""
    specs = [ProcessSpec(f"detector-{i}", ["detect", "--redis", NO_REDIS]) for i in range(2)]
    sup = Supervisor(
        specs,
        env={"FERVID_DATA_DIR": str(tmp_path / "data")},
        log_dir=tmp_path / "logs",
        stop_timeout=60,  # a worker that lost the signal would be SIGKILLed (-9) after this
        on_status=lambda _line: None,
    )
    sup.start()
    codes = sup.stop()
    logs = "\n".join(f"{p.name}: {p.read_text()[-1000:]}" for p in sorted((tmp_path / "logs").iterdir()))
    assert codes == {s.name: 0 for s in specs}, logs
