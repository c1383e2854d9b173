"""What a worker process holds while it runs: settings, the job store, one client per model
service, and the embedding models it has loaded. Built at worker start-up, closed at shutdown."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

from services.worker.embeddings import EmbedderCache
from services.worker.local_models import LocalModels
from services.worker.settings import WorkerSettings
from shared.clients import ModelServiceClient
from shared.jobs_store import JobStore

logger = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: WorkerSettings
    store: JobStore
    agent: ModelServiceClient
    scorer: ModelServiceClient
    embedders: EmbedderCache
    local_models: LocalModels
    """Model services on models a job trains, started by this worker."""
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @classmethod
    def build(cls, settings: WorkerSettings, store: JobStore) -> WorkerRuntime:
        token = settings.internal_token.get_secret_value() if settings.internal_token else None

        def client(name: str, url: str) -> ModelServiceClient:
            return ModelServiceClient(
                name,
                url,
                token=token,
                timeout=settings.request_timeout_s,
                connect_timeout=settings.connect_timeout_s,
            )

        return cls(
            settings=settings,
            store=store,
            agent=client("agent", settings.agent_url),
            scorer=client("scorer", settings.scorer_url),
            embedders=EmbedderCache(settings.embedding_device),
            local_models=LocalModels(settings),
        )

    async def aclose(self) -> None:
        await self.local_models.aclose()
        await self.agent.aclose()
        await self.scorer.aclose()
