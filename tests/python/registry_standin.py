"""A stand-in for a Confluent Schema Registry, for the Avro tests only.

No schema registry can be installed from the package registries this project
builds from (Confluent's is a JVM service, Karapace is not on PyPI), so the
Avro test runs this: the part of the registry REST API that serializers and
trendflow use, in memory. Records are written by Confluent's own Python
serializer (confluent-kafka), which registers its schemas here over HTTP.

Usage: python registry_standin.py PORT [USER:PASSWORD]
(with credentials, requests without that basic authentication get 401)
"""

import base64
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

schemas: list[str] = []  # schema id - 1 -> schema JSON text
versions: dict[str, list[int]] = {}  # subject -> ids, by version
credentials = sys.argv[2] if len(sys.argv) > 2 else None


class Registry(BaseHTTPRequestHandler):
    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/vnd.schemaregistry.v1+json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self) -> bool:
        if credentials is None:
            return True
        if self.headers.get("authorization") == "Basic " + base64.b64encode(credentials.encode()).decode():
            return True
        self.answer(401, {"error_code": 401, "message": "Unauthorized"})
        return False

    def do_GET(self) -> None:
        if not self.authorized():
            return
        found = re.fullmatch(r"/schemas/ids/(\d+)", self.path.split("?")[0])
        if found and 0 < int(found[1]) <= len(schemas):
            self.answer(200, {"schema": schemas[int(found[1]) - 1]})
        else:
            self.answer(404, {"error_code": 40403, "message": "Schema not found"})

    def do_POST(self) -> None:
        if not self.authorized():
            return
        found = re.fullmatch(r"/subjects/([^/]+)/versions", self.path.split("?")[0])
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if not found or body.get("schemaType", "AVRO") != "AVRO":
            self.answer(422, {"error_code": 42201, "message": "only Avro schemas under a subject"})
            return
        text = body["schema"]
        if text not in schemas:
            schemas.append(text)
        schema_id = schemas.index(text) + 1
        ids = versions.setdefault(found[1], [])
        if schema_id not in ids:
            ids.append(schema_id)
        self.answer(200, {"id": schema_id, "subject": found[1], "version": ids.index(schema_id) + 1, "schema": text})

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Registry)
    print(f"schema registry stand-in on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
