"""The Python example agent runs against a real node and does what its docstring says."""

import subprocess
import sys

from conftest import REPOSITORY


def test_the_python_agent_regrafts_after_an_epoch_advance(node):
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / "python_agent.py"), "--node", node.tcp,
         "--key", str(node.admin_key), "--world", "demo", "--advance"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ["created world demo", "advanced the epoch to 2", "staleEpoch",
                     "re-grafted under epoch 2", "ship on Tuesday", "deploys happen on Tuesdays"]:
        assert expected in result.stdout, result.stdout
