"""OpenAI embeddings requests --> Gemini embedding calls, and the vectors back.

The Gemini API embeds a batch with ``:batchEmbedContents`` and reports no token
counts, so usage is estimated (one token per 4 bytes of UTF-8, rounded up, as
the gateway estimates other providers). Vertex AI embeds with ``:predict`` and
counts tokens per input, which are used when present.
"""

from __future__ import annotations

import base64
import struct

from core.errors import InvalidRequest, UpstreamError
from serving.base import JsonObject, Usage, make_usage


def embedding_inputs(body: JsonObject) -> list[str]:
    """The texts to embed; token-id inputs are refused, Gemini takes text only."""
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise InvalidRequest("Gemini deployments embed a non-empty string or array of non-empty strings", param="input")
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise InvalidRequest("encoding_format must be float or base64", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
    return texts


def batch_embed_request(body: JsonObject, model_path: str, texts: list[str]) -> JsonObject:
    """The Gemini API's ``batchEmbedContents`` body: one request per text, each naming the model."""
    dims = body.get("dimensions")
    requests: list[JsonObject] = []
    for text in texts:
        request: JsonObject = {"model": model_path, "content": {"parts": [{"text": text}]}}
        if dims is not None:
            request["outputDimensionality"] = dims
        requests.append(request)
    return {"requests": requests}


def predict_request(body: JsonObject, texts: list[str]) -> JsonObject:
    """Vertex AI's ``predict`` body for embedding models."""
    out: JsonObject = {"instances": [{"content": text} for text in texts]}
    if body.get("dimensions") is not None:
        out["parameters"] = {"outputDimensionality": body["dimensions"]}
    return out


def to_openai_embeddings(reply: JsonObject, body: JsonObject, texts: list[str]) -> tuple[JsonObject, Usage]:
    """Either API's reply --> an OpenAI embeddings list; UpstreamError if the vectors do not match the inputs."""
    try:
        vectors, counted = _vectors(reply)
    except (AttributeError, TypeError, KeyError, ValueError):
        vectors, counted = [], None
    if len(vectors) != len(texts):
        raise UpstreamError("Gemini returned an embeddings reply of an unexpected shape")
    prompt = counted if counted is not None else sum((len(t.encode("utf-8")) + 3) // 4 for t in texts)
    as_base64 = body.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i, "embedding": _base64(vector) if as_base64 else vector} for i, vector in enumerate(vectors)]
    out: JsonObject = {
        "object": "list",
        "data": data,
        "model": body.get("model") or "",
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return out, make_usage(prompt, 0)


def _vectors(reply: JsonObject) -> tuple[list[list[float]], int | None]:
    if "embeddings" in reply:
        return [[float(v) for v in item["values"]] for item in reply["embeddings"]], None
    vectors: list[list[float]] = []
    counted: int | None = 0
    for prediction in reply["predictions"]:
        embedding = prediction["embeddings"]
        vectors.append([float(v) for v in embedding["values"]])
        tokens = (embedding.get("statistics") or {}).get("token_count")
        counted = None if counted is None or tokens is None else counted + int(tokens)
    return vectors, counted


def _base64(vector: list[float]) -> str:
    # What OpenAI sends for encoding_format=base64: little-endian float32s.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
