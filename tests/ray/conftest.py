"""A local Ray instance with Serve for the tests marked `ray` (skipped without Ray): one per
session, the blend deployed on it per test as needed, everything shut down at the end."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

DEPLOY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServe:
    """Serve on 127.0.0.1:port; deploy() (re)deploys the demo blend with a router."""

    port: int
    router: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def deploy(self, router: str, replicas: int = 2, fresh: bool = True, **options: Any) -> str:
        """The demo blend on CPU, `replicas` replicas (fresh: new ones, nothing cached; else
        the running deployment if it matches); its base URL."""
        from ray import serve

        from blendrt.ray_serve import RayServeOptions, blend_application

        options["replicas"] = replicas
        if not fresh and (router, options) == (self.router, self.options):
            return self.base_url
        if self.router is not None:
            serve.delete("blendrt")  # fresh replicas: nothing cached from a previous run
        self.router, self.options = router, options
        opts = RayServeOptions(
            blend_args=["--device", "cpu", "--seed", "0", "--max-in-flight", "64"],
            router=router,
            torch_threads=1,
            **options,
        )
        serve.run(blend_application(opts), name="blendrt", route_prefix="/")
        return self.base_url


@pytest.fixture(scope="session")
def local_serve() -> Iterator[LocalServe]:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.monotonic()
    # NOTE: 4 logical CPUs on any machine: two replicas (1 each) and the ingress fit.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield LocalServe(port)
    finally:
        serve.shutdown()
        ray.shutdown()
        print(f"ray session: {time.monotonic() - start:.1f} s")
