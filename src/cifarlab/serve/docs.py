"""``GET /docs``: the API, read from the server's own OpenAPI schema, as one HTML page with no
script or style from the internet (FastAPI's default page loads Swagger UI from a CDN, which a
machine offline, or a careful network, cannot reach)."""

from __future__ import annotations

import re
from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f4;border-radius:4px}
code{padding:0 .25em}pre{padding:.6em;overflow-x:auto}
.m{display:inline-block;min-width:3.5em;font-weight:600;color:#fff;border-radius:4px;
text-align:center;margin-right:.5em}.get{background:#2a7}.post{background:#27c}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;
text-align:left;vertical-align:top}
"""


def _text(markdown: str) -> str:
    """Escaped text, with `code` spans (the docstrings' only markdown) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(markdown))


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    t = schema.get("type", "")
    if t == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if schema.get("format") == "binary":
        return "file"
    return str(t or "object")


def docs_page(spec: dict[str, Any]) -> str:
    """The page: each path and method, its parameters, body and responses, and a curl line."""
    info = spec.get("info", {})
    out = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>{escape(info.get('title', 'API'))} — API</title><style>{_STYLE}</style>",
        f"<h1>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}</h1>",
        f"<p>{_text(info.get('description', ''))}</p>",
        '<p>The machine-readable description: <a href="openapi.json">/openapi.json</a> '
        '(OpenAPI 3). The page: <a href="./">/</a>.</p>',
    ]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            out.append(
                f'<h2><span class="m {method}">{method.upper()}</span>'
                f"<code>{escape(path)}</code> — {escape(op.get('summary', ''))}</h2>"
            )
            if op.get("description"):
                out.append(f"<p>{_text(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                out.append(
                    "<table><tr><th>parameter</th><th>in</th><th>type</th>"
                    "<th>default</th><th>what</th></tr>"
                )
                for p in params:
                    s = p.get("schema", {})
                    out.append(
                        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                        f"<td>{escape(_type(s))}</td><td>{escape(str(s.get('default', '')))}</td>"
                        f"<td>{_text(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            body = op.get("requestBody", {}).get("content", {})
            if body:
                kinds = ", ".join(f"<code>{escape(k)}</code>" for k in body)
                out.append(f"<p>Body: {kinds}.</p>")
            responses = op.get("responses", {})
            if responses:
                out.append("<table><tr><th>status</th><th>meaning</th></tr>")
                for code, r in responses.items():
                    out.append(
                        f"<tr><td>{escape(code)}</td>"
                        f"<td>{escape(r.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            example = _curl(method, path)
            if example:
                out.append(f"<pre>{escape(example)}</pre>")
    return "\n".join(out) + "\n</html>\n"


def _curl(method: str, path: str) -> str:
    base = "http://127.0.0.1:8000"
    if method == "post" and path == "/v1/predict":
        return (
            f"curl -F file=@cat.png -F file=@dog.jpg '{base}{path}?top_k=3'\n"
            f"curl --data-binary @cat.png -H 'Content-Type: image/png' {base}{path}"
        )
    if method == "get":
        return f"curl {base}{path}"
    return ""
