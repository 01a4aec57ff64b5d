#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::*;

/// Connected loopback pairs: (ours, theirs).
fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (0..n)
        .map(|_| {
            let ours = TcpStream::connect(addr).unwrap();
            let (theirs, _) = listener.accept().unwrap();
            (ours, theirs)
        })
        .collect()
}

fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; n];
    peer.read_exact(&mut got).unwrap();
    got
}

fn nothing_more(peer: &mut TcpStream) {
    peer.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let r = peer.read(&mut b);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "{r:?}"
    );
    peer.set_nonblocking(false).unwrap();
}

/// Fills `ours`'s send buffer (and the peer's receive buffer) until a write would block.
fn fill(ours: &TcpStream) -> usize {
    ours.set_nonblocking(true).unwrap();
    let chunk = vec![b'f'; 64 << 10];
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match (&*ours).write(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "socket never filled");
    }
    ours.set_nonblocking(false).unwrap();
    total
}

fn burst() -> Burst {
    Burst::new().expect("io_uring available on the test machine")
}

#[test]
fn each_buffer_goes_to_its_own_socket_in_one_call() {
    let mut pairs = pairs(5);
    let bufs: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("head {i}\r\n").into_bytes())
        .collect();
    let sends: Vec<_> = pairs
        .iter()
        .zip(&bufs)
        .map(|((ours, _), b)| (ours.as_fd(), &b[..]))
        .collect();
    let mut outcomes = Vec::new();
    let mut b = burst();
    b.send_all(&sends, &mut outcomes);
    drop(sends);
    assert_eq!(outcomes.len(), 5);
    for (i, ((_, theirs), o)) in pairs.iter_mut().zip(&outcomes).enumerate() {
        assert!(
            matches!(o, Outcome::Sent(n) if *n == bufs[i].len()),
            "{o:?}"
        );
        assert_eq!(read_exactly(theirs, bufs[i].len()), bufs[i]);
        nothing_more(theirs);
    }
    assert!(!b.is_broken());
}

#[test]
fn more_sends_than_the_ring_holds_take_several_calls_in_order() {
    let n = ENTRIES as usize * 2 + 7;
    let mut pairs = pairs(n);
    let bufs: Vec<Vec<u8>> = (0..n).map(|i| format!("{i:05}").into_bytes()).collect();
    let sends: Vec<_> = pairs
        .iter()
        .zip(&bufs)
        .map(|((ours, _), b)| (ours.as_fd(), &b[..]))
        .collect();
    let mut outcomes: Vec<Outcome> = (0..3).map(|_| Outcome::NotSubmitted).collect();
    let mut b = burst();
    b.send_all(&sends, &mut outcomes);
    drop(sends);
    assert_eq!(outcomes.len(), n, "cleared, then one per send");
    for (i, ((_, theirs), o)) in pairs.iter_mut().zip(&outcomes).enumerate() {
        assert!(matches!(o, Outcome::Sent(5)), "{i}: {o:?}");
        assert_eq!(read_exactly(theirs, 5), bufs[i]);
    }
    // The ring is reusable: a second burst on the same sockets.
    let sends: Vec<_> = pairs
        .iter()
        .map(|(ours, _)| (ours.as_fd(), &b"x"[..]))
        .collect();
    b.send_all(&sends, &mut outcomes);
    drop(sends);
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Sent(1))));
    for (_, theirs) in &mut pairs {
        assert_eq!(read_exactly(theirs, 1), b"x");
    }
}

#[test]
fn a_full_socket_would_block_at_once_and_the_others_still_go_out() {
    let mut pairs = pairs(3);
    fill(&pairs[1].0);
    let started = Instant::now();
    let sends: Vec<_> = pairs
        .iter()
        .map(|(ours, _)| (ours.as_fd(), &b"hello"[..]))
        .collect();
    let mut outcomes = Vec::new();
    let mut b = burst();
    b.send_all(&sends, &mut outcomes);
    drop(sends);
    // Not parked in the ring until the peer reads: the call came back with the refusal.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(&outcomes[1], Outcome::Failed(e) if e.kind() == ErrorKind::WouldBlock),
        "{:?}",
        outcomes[1]
    );
    for i in [0, 2] {
        assert!(matches!(outcomes[i], Outcome::Sent(5)), "{:?}", outcomes[i]);
        assert_eq!(read_exactly(&mut pairs[i].1, 5), b"hello");
    }
    assert!(!b.is_broken());
}

#[test]
fn a_buffer_larger_than_the_free_space_is_sent_in_part() {
    let mut pairs = pairs(1);
    let big = vec![b'b'; 64 << 20];
    let sends = [(pairs[0].0.as_fd(), &big[..])];
    let mut outcomes = Vec::new();
    burst().send_all(&sends, &mut outcomes);
    let Outcome::Sent(n) = outcomes[0] else {
        panic!("{:?}", outcomes[0]);
    };
    assert!(n > 0 && n < big.len(), "{n}");
    let got = read_exactly(&mut pairs[0].1, n);
    assert!(got.iter().all(|&c| c == b'b'));
    nothing_more(&mut pairs[0].1);
}

#[test]
fn a_closed_peer_is_an_error_not_a_signal() {
    let (ours, theirs) = pairs(1).pop().unwrap();
    drop(theirs);
    // The first write after the peer's close draws its reset; the next one fails.
    let _ = (&ours).write(b"x");
    std::thread::sleep(Duration::from_millis(50));
    let mut outcomes = Vec::new();
    let mut b = burst();
    b.send_all(&[(ours.as_fd(), &b"after close"[..])], &mut outcomes);
    assert!(
        matches!(&outcomes[0], Outcome::Failed(e)
            if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)),
        "{:?}",
        outcomes[0]
    );
    // Still here: no SIGPIPE. The ring is fine for the next burst.
    let (live, mut peer) = pairs(1).pop().unwrap();
    b.send_all(&[(live.as_fd(), &b"ok"[..])], &mut outcomes);
    assert!(matches!(outcomes[0], Outcome::Sent(2)), "{:?}", outcomes[0]);
    assert_eq!(read_exactly(&mut peer, 2), b"ok");
}

#[test]
fn an_empty_list_does_nothing() {
    let mut outcomes = vec![Outcome::NotSubmitted];
    burst().send_all(&[], &mut outcomes);
    assert!(outcomes.is_empty());
}
