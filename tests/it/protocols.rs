//! Protocols: HTTP/2 prior knowledge on plain TCP, TLS with ALPN h2, WebSocket upgrades.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::rustls;

use crate::support::{self, Gateway, upstream};

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_is_proxied() {
    let up = upstream::named("up").await;
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("all", "/", &format!("\"http://{up}\""))
    ));
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://app.test:{}/h2?x=1", gw.addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/h2");
    assert_eq!(
        json["headers"]["host"],
        format!("app.test:{}", gw.addr.port())
    );
    assert_eq!(json["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_alpn_h2_and_http11() {
    let up = upstream::named("up").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let gw = Gateway::start(&format!(
        "tls: {{ cert: {}, key: {} }}\nroutes:\n{}",
        cert_path.display(),
        key_path.display(),
        support::route("all", "/", &format!("\"http://{up}\""))
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for (alpn, want) in [
        ("h2", http::Version::HTTP_2),
        ("http/1.1", http::Version::HTTP_11),
    ] {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn.as_bytes()));
        let io = TokioIo::new(tls);
        let uri = format!("https://localhost:{}/tls", gw.addr.port());
        let resp = if want == http::Version::HTTP_2 {
            let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(c);
            s.send_request(
                http::Request::get(&uri)
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap()
        } else {
            let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            s.send_request(
                http::Request::get(&uri)
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap()
        };
        assert_eq!(resp.version(), want);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["headers"]["x-forwarded-proto"], "https", "{alpn}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_the_gateway() {
    let ws = upstream::websocket().await;
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("ws", "/ws", &format!("\"http://{ws}\""))
    ));
    let (mut socket, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        socket.send(format!("hello {i}").into()).await.unwrap();
        let msg = socket.next().await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("echo:hello {i}"));
    }
    socket.close(None).await.unwrap();
}

/// An HTTPS upstream whose certificate (for `localhost`) is issued by a private CA; returns
/// its port and the CA certificate in PEM.
async fn private_ca_upstream() -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("tls upstream saw {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca_cert.pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_are_verified_against_the_roots_and_ca_file() {
    let (port, ca_pem) = private_ca_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let gw = Gateway::start(&format!(
        r#"
routes:
  - name: trusted
    match: {{ path_prefix: /trusted }}
    upstream: {{ targets: ["https://localhost:{port}"], ca_file: {} }}
    auth: public
  - name: untrusted
    match: {{ path_prefix: /untrusted }}
    upstream: {{ targets: ["https://localhost:{port}"] }}
    auth: public
"#,
        ca_path.display()
    ));
    let ans = support::get(&gw.url("/trusted/x")).await;
    assert_eq!(ans.status, 200);
    assert_eq!(&ans.body[..], b"tls upstream saw /trusted/x");
    // Without the private CA the certificate is refused: fail closed, never plain text.
    let ans = support::get(&gw.url("/untrusted/x")).await;
    assert_eq!(ans.status, 502);
    assert_eq!(ans.json()["code"], "upstream_unavailable");
    assert!(
        gw.wait_log(
            "invalid peer certificate",
            std::time::Duration::from_secs(2)
        ),
        "the refusal is a certificate check: {}",
        gw.stderr()
    );
}
