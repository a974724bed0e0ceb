"""The seed documents' Python examples, verbatim: used by test_seeds.py and by
scripts/test-python.sh, which runs one against the wheel installed outside the repo.
Standard library only (nothing here may need the test requirements)."""

from __future__ import annotations

# Copied verbatim from ../shared/seeds/001_*.txt.
CLOUD_SERVICE = '''\
import ngrok

def load_file(name):
    with open(name, "r") as crt:
        return bytearray(crt.read().encode())

listener = ngrok.forward("localhost:8080", authtoken_from_env=True,
    proto="tls",
    domain="app.example.com",
    crt=load_file("/path/to/app-example-com-crt.pem"),
    key=load_file("/path/to/app-example-com-key.pem"))

print(f"Ingress established at: {listener.url()}");
'''

TERMINATE_AT_UPSTREAM = '''\
import ngrok

listener = ngrok.forward("localhost:8080", authtoken_from_env=True,
    proto="tls",
    domain="app.example.com")

print(f"Ingress established at: {listener.url()}");
'''
