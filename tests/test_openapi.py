"""OpenAPI document, Swagger UI and the liveness probe."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

from metamcp.db import Database


def test_openapi_documents_every_route_with_security(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert set(paths) >= {"/health", "/ready", "/api/v1/health", "/api/v1/auth/token",
                          "/api/v1/mcp/servers", "/api/v1/mcp/servers/{server_id}"}
    assert set(paths["/api/v1/mcp/servers"]) >= {"get", "post"}
    assert set(paths["/api/v1/mcp/servers/{server_id}"]) >= {"get", "put", "patch", "delete"}
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for method, operation in paths["/api/v1/mcp/servers/{server_id}"].items():
        if method == "parameters":
            continue
        assert {"bearerAuth": []} in operation["security"], method
        assert operation["summary"], method
        assert "401" in operation["responses"] and "404" in operation["responses"]
    assert "security" not in paths["/api/v1/auth/token"]["post"]
    post = paths["/api/v1/mcp/servers"]["post"]
    assert post["requestBody"]["content"]["application/json"]["example"]["name"] == "everything"
    assert "409" in post["responses"] and "201" in post["responses"]
    server_schema = spec["components"]["schemas"]["Server"]
    assert {"id", "name", "transport", "bearer_token", "headers"} <= set(server_schema["properties"])
    assert set(spec["components"]["schemas"]["Error"]["properties"]) == {"error", "message", "details"}


def test_openapi_documents_namespaces_and_endpoints(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    paths = spec["paths"]
    expected = {
        "/api/v1/namespaces": {"get", "post"},
        "/api/v1/namespaces/{namespace_id}": {"get", "patch", "delete"},
        "/api/v1/namespaces/{namespace_id}/servers/{server_id}": {"put", "delete"},
        "/api/v1/namespaces/{namespace_id}/tools": {"get", "patch"},
        "/api/v1/namespaces/{namespace_id}/tools/{tool_id}": {"patch"},
        "/api/v1/namespaces/{namespace_id}/prompts": {"get", "patch"},
        "/api/v1/namespaces/{namespace_id}/prompts/{prompt_id}": {"patch"},
        "/api/v1/endpoints": {"get", "post"},
        "/api/v1/endpoints/{endpoint_id}": {"get", "patch", "delete"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) - {"parameters"} == methods, path
        for method in methods:
            operation = paths[path][method]
            assert operation["summary"] and {"bearerAuth": []} in operation["security"], (path, method)
            assert {"401", "403"} <= set(operation["responses"]), (path, method)
            if method in ("post", "put", "patch"):
                assert "example" in operation["requestBody"]["content"]["application/json"], (path, method)
    bulk = paths["/api/v1/namespaces/{namespace_id}/tools"]["patch"]["requestBody"]["content"]["application/json"]
    assert bulk["schema"]["type"] == "array"
    assert "409" in paths["/api/v1/namespaces/{namespace_id}/tools/{tool_id}"]["patch"]["responses"]
    assert "409" in paths["/api/v1/namespaces/{namespace_id}/prompts/{prompt_id}"]["patch"]["responses"]
    assert "409" in paths["/api/v1/namespaces/{namespace_id}/servers/{server_id}"]["put"]["responses"]
    namespace = spec["components"]["schemas"]["Namespace"]["properties"]
    assert {"naming", "conflicts"} <= set(namespace)
    assert spec["components"]["schemas"]["NamespaceInput"]["properties"]["naming"]["enum"] == ["prefixed", "original"]
    tool = spec["components"]["schemas"]["NamespaceTool"]["properties"]
    assert {"server_name", "original_name", "name", "status", "overrides"} <= set(tool)
    assert set(spec["components"]["schemas"]["EndpointAuth"]["properties"]) == {"api_key", "query_param"}


def test_swagger_ui_page(client: FlaskClient) -> None:
    response = client.get("/swagger-ui")
    assert response.status_code == 200
    assert b"swagger-ui" in response.data and b"openapi.json" in response.data


def test_health(client: FlaskClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert set(response.json) == {"status", "version"} and response.json["status"] == "ok"
    assert response.json["version"]


#: (table, component schema) pairs whose `name` rules must be the database's.
NAME_RULES = [("mcp_servers", "ServerInput"), ("namespaces", "NamespaceInput"), ("endpoints", "EndpointInput"),
              ("namespace_tools", "ToolChange"), ("namespace_prompts", "PromptChange"), ("api_keys", "KeyInput")]
SAMPLE_NAMES = ["a", "A-b_c", "x" * 64, "x" * 65, "", "a__b", "__", "_a_", "a.b", "a b", "caf\u00e9", "a\n",
                "-", "a/b", " ", "  k ", "k" * 200, "k" * 201, "v1.2-beta"]


def _check_of(cur: Any, table: str) -> str:
    """The CHECK expression on the table's `name` column, as PostgreSQL stores it."""
    cur.execute("SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE conrelid = %s::regclass "
                "AND contype = 'c'", (table,))
    checks = [row["definition"] for row in cur.fetchall() if re.search(r"\bname\b", row["definition"])]
    assert len(checks) == 1, (table, checks)
    return checks[0].removeprefix("CHECK ")


def _spec_accepts(rule: dict[str, Any], value: str) -> bool:
    if not rule.get("minLength", 0) <= len(value) <= rule.get("maxLength", 10**9):
        return False
    # OpenAPI patterns are ECMA-262: `$` is the end of the text (Python's \Z), unanchored search.
    return re.search(rule.get("pattern", "").replace("$", r"\Z"), value) is not None


def test_openapi_states_the_name_rules_the_database_enforces(client: FlaskClient, db: Database) -> None:
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    with db.transaction() as cur:
        for table, component in NAME_RULES:
            rule = schemas[component]["properties"]["name"]
            assert {"pattern", "maxLength"} <= set(rule), component
            check = re.sub(r"\bname\b", "%(v)s", _check_of(cur, table))
            for value in SAMPLE_NAMES:
                cur.execute("SELECT " + check.replace("%", "%%").replace("%%(v)s", "%(v)s") + " AS ok",
                            {"v": value})
                stored_ok = bool(cur.fetchone()["ok"])
                if table == "api_keys":  # the server trims surrounding spaces first: spec ⊆ database
                    assert not _spec_accepts(rule, value) or stored_ok, (component, value)
                else:
                    assert _spec_accepts(rule, value) == stored_ok, (component, value, check)
    assert schemas["ServerInput"]["properties"]["name"]["pattern"] == "^(?!.*__)[A-Za-z0-9_-]{1,64}$"
    assert schemas["ToolChange"]["properties"]["name"]["pattern"] == "^[A-Za-z0-9_.-]{1,64}$"
    assert schemas["KeyPatch"]["properties"]["name"]["maxLength"] == 200
