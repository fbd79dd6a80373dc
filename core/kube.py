"""The Kubernetes API through the ``kubernetes`` client: one way to connect (the pod's service
account, or a URL and token from outside a cluster) and one way to report what the API
server answered. Used by the KServe promotion backend and the workflow's TFJob wait."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from core.errors import RetrainError


class KubeError(RetrainError):
    """The Kubernetes API cannot be reached, or refused a call; ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def api_client(api_url: str | None = None, token: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for ``api_url`` with a bearer ``token``, or, with no
    URL, for the API server of the cluster this pod runs in (its service account)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if api_url:
        configuration.host = api_url.rstrip("/")
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
    else:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise KubeError("not running in a cluster: KUBERNETES_SERVICE_HOST is not set "
                            "(set RETRAIN_KUBE_API_URL to reach an API server from outside)")
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise KubeError(f"cannot use the pod's service account: {exc}") from None
    return client.ApiClient(configuration)


def call(verb: str, path: str, method: Callable[..., Any], timeout: float = 10.0,
         **kwargs: Any) -> Any:
    """``method(**kwargs)`` (a kubernetes client call), its failures as ``KubeError`` naming
    the verb, the path and the API server's own message."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return method(**kwargs, _request_timeout=timeout)
    except ApiException as exc:
        try:
            message = json.loads(exc.body or "{}").get("message") or exc.reason
        except (ValueError, AttributeError):
            message = exc.body or exc.reason
        raise KubeError(f"Kubernetes API answered {exc.status} to {verb} {path}: {message}",
                        exc.status) from None
    except HTTPError as exc:
        raise KubeError(f"Kubernetes API unreachable ({verb} {path}): {exc}") from None
