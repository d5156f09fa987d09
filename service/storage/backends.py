"""The vector backends by name: `--index-backend` (serve) and `neardup index rebuild --backend`
choose from BACKENDS; nothing else names one. A backend's optional engine client is imported
when it is opened (pymilvus: the `milvus` extra), not here."""

from service.storage.milvus_index import MilvusBackend
from service.storage.snapshots import UsearchBackend
from service.storage.vector_index import IndexBackend

BACKENDS: dict[str, type[IndexBackend]] = {"usearch": UsearchBackend, "milvus": MilvusBackend}
DEFAULT_BACKEND = "usearch"
