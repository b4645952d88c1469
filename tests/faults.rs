//! Faults a proxy meets in production: half-written frames, clients that
//! vanish, messages at the size limit, and deep pipelines.

mod common;

use bson::rawdoc;
use common::{Proxy, Upstream};
use likewise::conn::Connection;
use likewise::wire::{msg, Header, OpMsg};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn ping_ok(addr: &str) {
    let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    let ping = rawdoc! { "ping": 1, "$db": "admin" };
    conn.write_frame(&msg::encode_body(1, 0, &ping))
        .await
        .unwrap();
    let reply = conn.read_frame().await.unwrap().unwrap();
    assert_eq!(
        OpMsg::parse(&reply).unwrap().body().get_f64("ok").unwrap(),
        1.0
    );
}

#[tokio::test]
async fn half_written_frames_and_vanishing_clients_hurt_no_one() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let addr = proxy.addr.to_string();
    let ping = msg::encode_body(7, 0, &rawdoc! { "ping": 1, "$db": "admin" });
    for cut in [1, 4, 15, 16, 20, ping.len() - 1] {
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&ping[..cut]).await.unwrap();
        drop(raw); // gone mid-frame
    }
    // A client that sends a big query and leaves before the reply.
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let find = rawdoc! { "find": "nothing", "filter": {}, "$db": "faults" };
    raw.write_all(&msg::encode_body(8, 0, &find)).await.unwrap();
    drop(raw);
    ping_ok(&addr).await;
}

#[tokio::test]
async fn a_client_leaving_in_the_middle_of_a_large_reply_hurts_no_one() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let addr = proxy.addr.to_string();
    let pad = "y".repeat(2_000_000);
    let mut conn = Connection::new(TcpStream::connect(&addr).await.unwrap());
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..6 {
        docs.push(rawdoc! { "_id": i, "pad": pad.as_str() });
    }
    let insert = rawdoc! { "insert": "wide", "documents": docs, "$db": "faults" };
    conn.write_frame(&msg::encode_body(1, 0, &insert))
        .await
        .unwrap();
    let reply = conn.read_frame().await.unwrap().unwrap();
    assert_eq!(OpMsg::parse(&reply).unwrap().body().get_i32("n"), Ok(6));
    // About 12 MB on its way back; the client reads a little and goes.
    let find = rawdoc! { "find": "wide", "filter": {}, "batchSize": 100, "$db": "faults" };
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    raw.write_all(&msg::encode_body(2, 0, &find)).await.unwrap();
    let mut first = [0u8; 1024];
    tokio::io::AsyncReadExt::read_exact(&mut raw, &mut first)
        .await
        .unwrap();
    drop(raw);
    // The proxy and the other connections carry on.
    ping_ok(&addr).await;
    let count = rawdoc! { "count": "wide", "$db": "faults" };
    conn.write_frame(&msg::encode_body(3, 0, &count))
        .await
        .unwrap();
    let reply = conn.read_frame().await.unwrap().unwrap();
    assert_eq!(OpMsg::parse(&reply).unwrap().body().get_i32("n"), Ok(6));
}

#[tokio::test]
async fn messages_up_to_the_limit_pass_and_one_byte_more_is_refused() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let addr = proxy.addr.to_string();
    // An insert of several documents that brings the message to just under
    // 48,000,000 bytes, in a document sequence as drivers send it.
    let pad = "x".repeat(15_000_000);
    let docs: Vec<_> = (0..3)
        .map(|i| rawdoc! { "_id": i, "pad": pad.as_str() })
        .collect();
    let body = rawdoc! { "insert": "big", "$db": "faults" };
    let seq = msg::DocumentSequence {
        identifier: "documents",
        documents: docs.iter().map(|d| d.as_ref()).collect(),
    };
    let frame = msg::encode(
        3,
        0,
        0,
        &[msg::Section::Body(&body), msg::Section::Sequence(seq)],
    );
    assert!(
        frame.len() > 45_000_000 && frame.len() <= 48_000_000,
        "{}",
        frame.len()
    );
    let mut conn = Connection::new(TcpStream::connect(&addr).await.unwrap());
    conn.write_frame(&frame).await.unwrap();
    let reply = conn.read_frame().await.unwrap().unwrap();
    let reply = OpMsg::parse(&reply).unwrap();
    assert_eq!(reply.body().get_i32("n").unwrap(), 3, "{:?}", reply.body());

    // A header announcing one byte more than the limit: closed, nothing read.
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let mut header = Vec::new();
    Header {
        length: 16,
        request_id: 4,
        response_to: 0,
        op_code: likewise::wire::OpCode::Msg,
    }
    .write(&mut header);
    header[0..4].copy_from_slice(&48_000_001i32.to_le_bytes());
    raw.write_all(&header).await.unwrap();
    let mut over = Connection::new(raw);
    assert!(matches!(over.read_frame().await, Ok(None) | Err(_)));
    ping_ok(&addr).await;
}

#[tokio::test]
async fn ten_thousand_pipelined_requests_are_answered_in_order() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    const N: i32 = 10_000;
    let sender = tokio::spawn(async move {
        let mut all = Vec::new();
        for id in 1..=N {
            all.extend(msg::encode_body(
                id,
                0,
                &rawdoc! { "ping": 1, "$db": "admin" },
            ));
        }
        writer.write_all(&all).await.unwrap();
        writer
    });
    // Read replies as they come (the proxy answers while we still send).
    let mut buf = bytes::BytesMut::new();
    let mut expected = 1;
    while expected <= N {
        use tokio::io::AsyncReadExt;
        while let Some(len) = likewise::wire::frame_len(&buf).unwrap() {
            let frame = buf.split_to(len);
            let reply = OpMsg::parse(&frame).unwrap();
            assert_eq!(reply.header.response_to, expected);
            expected += 1;
        }
        if expected > N {
            break;
        }
        let n = reader.read_buf(&mut buf).await.unwrap();
        assert!(n > 0, "proxy closed after {} replies", expected - 1);
    }
    drop(sender.await.unwrap());
}
