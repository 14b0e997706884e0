"""One APIRouter per resource: models, datasets, jobs, events (SSE, WebSocket), chat, system."""
