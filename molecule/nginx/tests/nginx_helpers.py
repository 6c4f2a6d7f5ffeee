"""Helpers for the nginx scenario's tests: talk HTTP from inside the load balancer, read its
JSON access log, reach the app hosts and stop or start their stub app."""

import json
import os
import shlex
from dataclasses import dataclass

import testinfra

APP_HOSTS = ("nginx-app1", "nginx-app2")
SITE_CONF = "/etc/nginx/conf.d/segserve.conf"
ACCESS_LOG = "/var/log/nginx/segserve_access.log"
TLS_CERT = "/etc/nginx/tls/segserve.crt"
STUB_SERVICE = "stub-app"
# nginx_upstream_fail_timeout_s in molecule.yml, plus a margin: a host that failed is back
# in rotation after this long.
FAIL_TIMEOUT_S = 3


@dataclass
class Response:
    status: int
    headers: dict
    body: str

    def json(self):
        return json.loads(self.body)


# The scenario serves the API over TLS (port 80 only redirects): tests reach it by the name
# its self-signed certificate carries, on the loopback address.
API = "https://nginx-lb1"


def http(host, url, *curl_args, via="127.0.0.1"):
    """Run curl on `host` and return the last response (status, lower-cased headers, body).
    A URL on API is sent to `via` and checked against the generated certificate."""
    if url.startswith(API):
        curl_args = ("--resolve", f"nginx-lb1:443:{via}", "--cacert", TLS_CERT, *curl_args)
    args = " ".join(shlex.quote(a) for a in (*curl_args, url))
    out = host.check_output(
        f"curl -sS -m 20 -D /tmp/curl-headers -o /tmp/curl-body {args} >/dev/null"
        " && cat /tmp/curl-headers && printf '\\n<<<body>>>\\n' && cat /tmp/curl-body"
    )
    raw_headers, body = out.split("\n<<<body>>>\n", 1)
    # After `100 Continue` the real answer is the last header block.
    block = [b for b in raw_headers.replace("\r", "").split("\n\n") if b.strip()][-1]
    status_line, *lines = block.split("\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body)


def access_log(host):
    """Every entry of the JSON access log, parsed."""
    content = host.file(ACCESS_LOG).content_string
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def app_host(name):
    return testinfra.get_host(
        f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}"
    )


def app_address(name):
    """The address nginx reaches an app host on (its default IPv4 address)."""
    return app_host(name).check_output("hostname -I").split()[0]


def lb_address(host):
    return host.check_output("hostname -I").split()[0]


def set_stub(names, state):
    """Stop or start the stub app on app hosts; wait for its sockets when starting."""
    for name in names:
        app = app_host(name)
        app.check_output(f"systemctl {state} {STUB_SERVICE}")
        if state == "start":
            for port in (8001, 8002):
                app.check_output(
                    f"timeout 30 sh -c 'until ss -ltn | grep -q :{port}; do sleep 0.2; done'"
                )
