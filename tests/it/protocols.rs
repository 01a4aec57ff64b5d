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
