"""Who may call resnet50 serve: the bearer token (tritonclient sending the header, a wrong one, none, one in the
query string), the open health probes, the rule for binding beyond loopback, and HTTPS through uvicorn. Every
server here listens on 127.0.0.1."""

import datetime
import ipaddress
import re
import ssl

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from resnet50 import create_model
from resnet50.cli import main
from resnet50.cli import serve as cli_serve
from resnet50.errors import UserError
from resnet50.infer import EagerBackend, load_model
from resnet50.serve import BackgroundServer, ServeConfig
from resnet50.weights import Preprocessing, save

from .helpers import encoded

TOKEN = "s3cret-Token_0123456789abcdef"
NAME = "resnet20_cifar"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save(path, create_model("resnet20_cifar", num_classes=3), ["cat", "dog", "bird"], Preprocessing(36, 32), "test")
    return path


@pytest.fixture(scope="module")
def server(weights):
    loaded = load_model(weights)
    with BackgroundServer(loaded, EagerBackend(loaded.model), ServeConfig(port=0, token=TOKEN)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def _input():
    x = np.zeros((1, 3, 32, 32), np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_tritonclient_with_the_bearer_header_is_served(client):
    r = client.infer(NAME, [_input()], headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.as_numpy("logits").shape == (1, 3)
    assert client.get_model_metadata(NAME, headers={"Authorization": f"Bearer {TOKEN}"})["name"] == NAME


@pytest.mark.parametrize("headers, query, words", [
    (None, None, "authentication required: send the header 'Authorization: Bearer <token>'"),
    ({"Authorization": "Bearer wrong-token"}, None, "wrong credential"),
    ({"Authorization": f"Basic {TOKEN}"}, None, "wrong credential"),
    ({"Authorization": f"Bearer {TOKEN}x"}, None, "wrong credential"),
    (None, {"token": TOKEN}, "a credential in the URL's query string is refused (URLs are logged)"),
    ({"Authorization": f"Bearer {TOKEN}"}, {"access_token": TOKEN}, "query string is refused"),
], ids=["none", "wrong", "basic-scheme", "longer", "query-string", "query-string-with-header"])
def test_tritonclient_without_the_right_header_gets_401(client, headers, query, words):
    with pytest.raises(InferenceServerException, match=re.escape(words)) as e:
        client.infer(NAME, [_input()], headers=headers, query_params=query)
    assert e.value.status() == "401"
    with pytest.raises(InferenceServerException, match=re.escape(words)):
        client.get_model_metadata(NAME, headers=headers, query_params=query)


def test_401_is_json_on_every_route_but_the_health_probes(server):
    with httpx.Client(base_url=server.url, timeout=30) as h:
        for method, path in [("POST", "/predict"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/v2"),
                             ("GET", f"/v2/models/{NAME}"), ("GET", f"/v2/models/{NAME}/ready"), ("GET", "/nope")]:
            r = h.request(method, path, content=encoded() if method == "POST" else None)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Bearer") and "error" in r.json()
        assert h.get("/v2/health/live").json() == {"live": True}
        assert h.get("/v2/health/ready").json() == {"ready": True}
        ok = h.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "token" not in ok.json()["settings"] and TOKEN not in ok.text
        r = h.post("/predict", content=encoded(), headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_binding_beyond_loopback_needs_a_token_or_no_auth(weights, tmp_path, capsys, monkeypatch):
    with pytest.raises(UserError, match="--host 0.0.0.0 serves anyone who can reach the port: pass --token-file"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", token=TOKEN).token == TOKEN and ServeConfig(host="::", no_auth=True).no_auth
    assert TOKEN not in repr(ServeConfig(token=TOKEN))
    rc = main(["serve", "--weights", str(weights), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "pass --token-file FILE" in err and "--no-auth" in err
    for content, words in [(None, "no such file"), ("", "holds no token"), ("two words", "spaces")]:
        path = tmp_path / "token.txt"
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_text(content)
        rc = main(["serve", "--weights", str(weights), "--host", "0.0.0.0", "--token-file", str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and words in err, err
    started = []
    monkeypatch.setattr(cli_serve, "serve", lambda loaded, backend, cfg: started.append(cfg))
    assert main(["serve", "--weights", str(weights), "--host", "0.0.0.0", "--no-auth", "--backend", "eager"]) == 0
    err = capsys.readouterr().err
    assert "auth: none (--no-auth: anyone who can reach the port may call it)" in err.splitlines()[0]
    assert started[-1].no_auth and not started[-1].token
    (tmp_path / "token.txt").write_text(TOKEN + "\n")
    assert main(["serve", "--weights", str(weights), "--host", "0.0.0.0", "--token-file", str(tmp_path / "token.txt"),
                 "--backend", "eager"]) == 0
    assert "auth: bearer token" in capsys.readouterr().err and started[-1].token == TOKEN


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")


def test_tls_through_uvicorn_with_the_token(weights, tmp_path, capsys):
    cert, key = _self_signed(tmp_path)
    loaded = load_model(weights)
    cfg = ServeConfig(port=0, token=TOKEN, tls_cert=cert, tls_key=key)
    with BackgroundServer(loaded, EagerBackend(loaded.model), cfg) as s:
        assert s.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=s.url, timeout=30, verify=ssl.create_default_context(cafile=cert)) as h:
            r = h.post("/predict", content=encoded(), headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and len(r.json()["predictions"]) == 3
            assert h.post("/predict", content=encoded()).status_code == 401
        with httpx.Client(base_url=s.url.replace("https", "http"), timeout=30) as plain, \
                pytest.raises(httpx.HTTPError):
            plain.get("/v2/health/live")
    with pytest.raises(UserError, match="HTTPS needs both --tls-cert and --tls-key"):
        ServeConfig(tls_cert=cert)
    (tmp_path / "bad.pem").write_text("not a certificate")
    rc = main(["serve", "--weights", str(weights), "--tls-cert", str(tmp_path / "bad.pem"), "--tls-key", key,
               "--backend", "eager", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("resnet50 serve: error: cannot use --tls-cert"), err
