"""The Elasticsearch / OpenSearch loader (``cdp_loaders``: ``elasticsearch``): processed tables behind search aliases.

See loader.py for the load itself and docs/loading.md for modes, guarantees and the emulators the tests use.
"""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import LoaderDescriptor


@hookimpl
def cdp_loaders() -> list[LoaderDescriptor]:
    return [
        LoaderDescriptor(
            name="elasticsearch",
            loader="loaders.elasticsearch.loader:SearchLoader",
            description="Processed tables into Elasticsearch or OpenSearch: bulk upserts by id, alias swap on a full "
            "refresh.",
            settings_schema={
                "type": "object",
                "properties": {
                    "es_url": {
                        "type": "string",
                        "title": "Elasticsearch / OpenSearch URL",
                        "description": "The cluster's URL; else CDP_ES_URL, else http://127.0.0.1:9200.",
                        "secret": True,
                    },
                    "flavour": {"type": "string", "enum": ["elasticsearch", "opensearch"], "default": "elasticsearch"},
                    "api_key": {"type": "string", "title": "API key (Elasticsearch)", "secret": True},
                    "username": {"type": "string"},
                    "password": {"type": "string", "secret": True},
                    "ca_certs": {"type": "string", "description": "CA certificate file that signed the cluster's."},
                    "chunk_size": {"type": "integer", "default": 1000},
                    "max_retries": {"type": "integer", "default": 5, "description": "Retries of a 429 per chunk."},
                    "initial_backoff": {"type": "number", "default": 1.0},
                    "number_of_shards": {"type": "integer", "default": 1},
                    "number_of_replicas": {"type": "integer", "default": 1},
                    "keep_previous": {"type": "boolean", "default": True},
                    "field_mappings": {
                        "type": "object",
                        "description": "{table: {column: mapping}}: replaces the mapping derived for a column.",
                    },
                    "dlq_url": {"type": "string", "description": "Where rejected documents go; else the DLQ zone."},
                },
            },
            # noida-db's Elasticsearch 8.15 API emulator (a dev dependency): the demo's search cluster.
            local_server="loaders.elasticsearch.emulator:noida_elasticsearch",
            url_env_var="CDP_ES_URL",
        )
    ]
