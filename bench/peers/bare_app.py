"""The least a Flask app can do for `POST /jobs`: read the JSON body and answer 202 with
an id. No key, no validation, no Redis. bench/peers/ceiling.py serves it with the API's
own gunicorn command line, to measure what the web stack alone allows one connection.
"""

from __future__ import annotations

import uuid

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/jobs")
    def accept() -> tuple:
        body = request.get_json()
        return jsonify({"id": str(uuid.uuid4()), "workload": body["workload"]}), 202

    return app
