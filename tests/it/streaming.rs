//! Bodies stream through the gateway: 100 MiB each way while its memory stays flat.

use http_body_util::BodyExt;

use crate::support::{self, Echo, Gateway, TestBody, client, empty};

const SIZE: u64 = 100 * 1024 * 1024;
/// Peak RSS may grow by buffers and pools, never by anything near the body size.
const MAX_GROWTH_KIB: u64 = 24 * 1024;

fn zeros(len: u64) -> TestBody {
    gatehouse::echo::Zeros::new(len)
        .map_err(|never| match never {})
        .boxed()
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_mib_up_and_down_with_flat_memory() {
    let echo = Echo::start();
    let gw = Gateway::start(&format!(
        "routes:\n{}",
        support::route("echo", "/", &format!("\"{}\"", echo.url()))
    ));
    // Warm up pools and allocator before the baseline.
    assert_eq!(support::get(&gw.url("/warm")).await.status, 200);
    let (rss_before, _) = gw.memory_kib();
    // Start the peak from here: what happened at start-up (the argon2 warm-up touches 19 MiB)
    // is not what this test measures.
    gw.reset_peak_memory();

    // Upload: the echo upstream counts what arrives.
    let req = http::Request::post(gw.url("/upload"))
        .header("content-length", SIZE.to_string())
        .body(zeros(SIZE))
        .unwrap();
    let ans = support::collect(client().request(req).await.unwrap()).await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.json()["body_bytes"], SIZE);

    // Download: count frames without keeping them.
    let req = http::Request::get(gw.url(&format!("/download?size={SIZE}")))
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);

    let (rss_after, peak) = gw.memory_kib();
    eprintln!("gateway RSS before {rss_before} KiB, after {rss_after} KiB, peak {peak} KiB");
    assert!(
        peak < rss_before + MAX_GROWTH_KIB,
        "peak RSS {peak} KiB grew more than {MAX_GROWTH_KIB} KiB over {rss_before} KiB"
    );
}
