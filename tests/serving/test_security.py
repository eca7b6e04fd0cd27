"""TLS, mutual TLS and bearer tokens on a real server, with certificates made here."""
import datetime
import ipaddress

import grpc
import numpy as np
import pytest

from harness import RunningServer, config, make_repository
from kindling.serving import Client, ServingError
from kindling.serving.server import insecure_bind

X = np.zeros((1, 28, 28), np.float32)


def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, issuer_key=None, issuer=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        return key, subject

    ca_key, ca_name = make("ca", ca=True)
    make("server", ca_key, ca_name, san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    make("client", ca_key, ca_name)
    make("stranger")  # self-signed: not from the CA
    return {n: (folder / f"{n}.crt", folder / f"{n}.key") for n in ("ca", "server", "client", "stranger")}


@pytest.fixture(scope="module")
def setup(trained, tmp_path_factory):
    _, folder = trained
    root = tmp_path_factory.mktemp("secure")
    make_repository(root / "repo", folder, [40])
    certs = root / "certs"
    certs.mkdir()
    return root / "repo", _certificates(certs)


def _code(client):
    try:
        return client.classify("digits", [X], timeout=10).version
    except ServingError as e:
        return e.code


def test_tls_and_mutual_tls(setup):
    repo, certs = setup
    ca = certs["ca"][0]
    with RunningServer(config(repo, tls_cert=certs["server"][0], tls_key=certs["server"][1])) as s:
        assert _code(Client(s.target, tls_ca=ca)) == 40
        assert _code(Client(s.target)) is grpc.StatusCode.UNAVAILABLE  # plain text to a TLS port
        assert _code(Client(s.target, tls_ca=certs["stranger"][0])) is grpc.StatusCode.UNAVAILABLE  # wrong CA
    with RunningServer(config(repo, tls_cert=certs["server"][0], tls_key=certs["server"][1], tls_client_ca=ca)) as s:
        assert _code(Client(s.target, tls_ca=ca, tls_cert=certs["client"][0], tls_key=certs["client"][1])) == 40
        assert _code(Client(s.target, tls_ca=ca)) is grpc.StatusCode.UNAVAILABLE  # no client certificate
        assert _code(Client(s.target, tls_ca=ca, tls_cert=certs["stranger"][0],
                            tls_key=certs["stranger"][1])) is grpc.StatusCode.UNAVAILABLE


def test_bearer_tokens(setup, tmp_path):
    repo, _ = setup
    tokens = tmp_path / "tokens"
    tokens.write_text("# who may call\ns3cret-token-for-the-tests\n\nanother-token-0123456789\n")
    with RunningServer(config(repo, token_file=tokens)) as s:
        assert _code(Client(s.target, token="s3cret-token-for-the-tests")) == 40
        assert _code(Client(s.target, token="another-token-0123456789")) == 40
        with pytest.raises(ServingError, match="missing bearer token") as e:
            Client(s.target).list_models()
        assert e.value.code is grpc.StatusCode.UNAUTHENTICATED
        assert _code(Client(s.target, token="s3cret-token-for-the-test")) is grpc.StatusCode.UNAUTHENTICATED
        assert Client(s.target).health("digits") == "SERVING"  # probes need no token
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
        with grpc.insecure_channel(s.target) as channel:  # reflection (a stream) is refused too
            with pytest.raises(grpc.RpcError) as e:
                list(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16 characters"):
        RunningServer(config(repo, token_file=short)).__enter__()


def test_a_non_loopback_address_without_tls_or_token_warns():
    assert "neither TLS nor a token" in insecure_bind("0.0.0.0", tls=False, token=False)
    assert "neither TLS nor a token" in insecure_bind("192.0.2.10", tls=False, token=False)
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert insecure_bind(host, tls=False, token=False) is None
    assert insecure_bind("0.0.0.0", tls=True, token=False) is None
    assert insecure_bind("0.0.0.0", tls=False, token=True) is None
