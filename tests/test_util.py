"""kdsearch._util: atomic writes leave whole files with the mode an ordinary write would give them."""

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from kdsearch._util import atomic_path, atomic_write_json, atomic_write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    # mkstemp creates 0600 files: a report or export renamed from one could not be read by a web server
    # or a deployment service running as another user (was -rw------- whatever the umask)
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.txt", "hello")
        atomic_write_json(tmp_path / "data.json", {"a": 1})
        with atomic_path(tmp_path / "model.bin") as tmp:
            tmp.write_bytes(b"\0")
        with atomic_path(tmp_path / "model.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))  # safetensors replaces the file it is given (seen as 0600)
    finally:
        os.umask(old)
    names = ["data.json", "model.bin", "model.safetensors", "report.txt"]
    for name in names:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temp files left


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_exact_fp32_turns_tf32_off_inside_and_restores_it():
    from kdsearch._util import exact_fp32

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with exact_fp32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_the_cli_logging_levels_quiet_normal_verbose(capsys):
    """configure_logging(-1 | 0 | 1): -q keeps warnings only, the default shows progress lines, -v adds debug lines;
    lines go to the stderr of the moment, stdout stays for results."""
    import logging

    from kdsearch._util import _StderrHandler, configure_logging

    log = logging.getLogger("kdsearch.pipeline.find")
    try:
        for verbosity, shown in ((-1, {"warning"}), (0, {"info", "warning"}), (1, {"debug", "info", "warning"})):
            configure_logging(verbosity)
            log.debug("debug")
            log.info("info")
            log.warning("warning")
            out, err = capsys.readouterr()
            assert out == "" and set(err.split()) == shown, (verbosity, err)
        # configured again, not stacked (pytest adds capture handlers of its own, hence only ours are counted)
        assert sum(isinstance(h, _StderrHandler) for h in logging.getLogger("kdsearch").handlers) == 1
    finally:
        configure_logging(0)
