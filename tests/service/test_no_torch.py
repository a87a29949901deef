"""The serving path never imports torch: the app builds and answers with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.service.conftest import REPOSITORY, TOKEN, BaseArtifact

_SCRIPT = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from pathlib import Path
from fastapi.testclient import TestClient
from service.main import create_app
from service.settings import Settings

settings = Settings(
    state_dir=Path(sys.argv[1]), artifact_dir=Path(sys.argv[2]), admin_token=sys.argv[3]
)
with TestClient(create_app(settings)) as client:
    top = client.get("/v1/users/u1/recommendations", params={"k": 5})
    assert top.status_code == 200, top.text
    assert len(top.json()["items"]) == 5
    batch = client.post("/v1/recommendations", json={"user_ids": ["u1", "u2"], "item_ids": ["i1"]})
    assert batch.status_code == 200, batch.text
    auth = {"Authorization": f"Bearer {sys.argv[3]}"}
    job = client.post("/v1/admin/budget", json={"target_sparsity": 0.9}, headers=auth)
    assert job.status_code == 202, job.text
    assert client.get("/metrics").status_code == 200
    assert client.post("/v1/admin/reload", headers=auth).status_code == 200
print("served without torch")
"""


def test_the_service_serves_without_torch(base_model: BaseArtifact, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "state"), str(base_model.artifact), TOKEN],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "served without torch" in result.stdout
