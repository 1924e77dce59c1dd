"""OpenAPI document, Swagger UI and the liveness probe."""

from __future__ import annotations

from flask.testing import FlaskClient


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
