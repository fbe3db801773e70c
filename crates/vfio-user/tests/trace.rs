//! Message tracing end to end: our client against our server over a real UNIX socket, each side
//! tracing to its own JSON-lines file (or memory buffer). The traces are read back and checked
//! message by message: both directions, both sides, ids that match across the socket, decoded
//! payload fields, errno of error replies, server→client DMA on the main and the twin socket,
//! tracing switched on and off while the server runs, and malformed messages.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{sock_path, start, REG_DMA_DONE, REG_DMA_IOVA, REG_DMA_LEN};
use emudev_vfio_user::client::{Client, ClientConfig, ClientError};
use emudev_vfio_user::server::ServerConfig;
use emudev_vfio_user::trace::{
    Channel, Direction, JsonLinesTracer, Side, TraceBuffer, TraceSwitch, Tracer,
};
use emudev_vfio_user::wire::{self, Command, Header, IrqAction, IrqSetData, MessageBuilder};
use emudev_vfio_user::Errno;
use serde_json::Value;
use vfio_bindings::bindings::vfio;

/// A trace file next to the test's socket.
fn trace_path(sock: &Path, name: &str) -> PathBuf {
    sock.with_file_name(format!("{name}.jsonl"))
}

/// Every line of a trace file, each parsed as a JSON object (a line that does not parse fails
/// the test).
fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read trace file");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {} of {}: {e}: {l}", i + 1, path.display()));
            assert!(v.is_object(), "line {} is not an object: {l}", i + 1);
            v
        })
        .collect()
}

/// Records matching side/direction/command/type.
fn find<'a>(lines: &'a [Value], dir: &str, cmd: &str, reply: bool) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["direction"] == dir && v["cmd"] == cmd && v["reply"] == reply)
        .collect()
}

/// The one record with this direction, command, type and id.
fn one<'a>(lines: &'a [Value], dir: &str, cmd: &str, reply: bool, id: &Value) -> &'a Value {
    let m: Vec<&Value> = find(lines, dir, cmd, reply)
        .into_iter()
        .filter(|v| &v["id"] == id)
        .collect();
    assert_eq!(m.len(), 1, "{dir} {cmd} reply={reply} id={id}: {m:?}");
    m[0]
}

/// Every message one side sent shows up, with the same id, command, type, size and fd count,
/// as received on the other side.
fn assert_mirrored(sent_by: &[Value], received_by: &[Value]) {
    let sends: Vec<&Value> = sent_by
        .iter()
        .filter(|v| v["direction"] == "send")
        .collect();
    assert!(!sends.is_empty());
    for s in sends {
        let cmd = s["cmd"].as_str().expect("cmd");
        let reply = s["reply"].as_bool().expect("reply flag");
        let r = one(received_by, "recv", cmd, reply, &s["id"]);
        for k in [
            "cmd_num", "flags", "size", "nfds", "errno", "socket", "payload",
        ] {
            assert_eq!(
                s.get(k),
                r.get(k),
                "{k} of {cmd} id {} differs between send and recv",
                s["id"]
            );
        }
    }
}

fn file_tracer(path: &Path) -> Arc<JsonLinesTracer> {
    Arc::new(JsonLinesTracer::create(path).expect("create trace file"))
}

fn errno_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Errno {
    match r {
        Err(ClientError::Server { errno, .. }) => errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn a_session_is_traced_on_both_sides_with_matching_ids() {
    let sock = sock_path("trace-session");
    let (server_file, client_file) = (trace_path(&sock, "server"), trace_path(&sock, "client"));
    let st = file_tracer(&server_file);
    let ct = file_tracer(&client_file);
    let (server, path, _events) = {
        let cfg = ServerConfig {
            trace: Some(Arc::new(TraceSwitch::with_tracer(st.clone()))),
            ..ServerConfig::default()
        };
        start("trace-session", cfg)
    };
    let cfg = ClientConfig {
        trace: Some(Arc::new(TraceSwitch::with_tracer(ct.clone()))),
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&path, cfg).expect("connect");

    c.write_u64(0, 0x10, 0x1122_3344_5566_7788).expect("write");
    assert_eq!(c.read_u64(0, 0x10).expect("read"), 0x1122_3344_5566_7788);
    let buf = c
        .alloc_dma(0x10_0000, 0x2000, true)
        .expect("dma map with fd");
    c.dma_unmap(buf.iova(), buf.len()).expect("dma unmap");
    // An unknown feature: the test device answers EOPNOTSUPP.
    let unknown_feature = vfio::VFIO_DEVICE_FEATURE_GET | 0x55;
    assert_eq!(
        errno_of(c.device_feature(unknown_feature, &[])),
        Errno::NOTSUP
    );
    // A vector out of range: EINVAL.
    assert_eq!(
        errno_of(c.set_irqs(0, IrqAction::Mask, IrqSetData::None, 5, 1)),
        Errno::INVAL
    );
    // Message DMA: the device reads and writes client memory by DMA_READ/DMA_WRITE on the
    // main socket while the client waits for its REGION_WRITE reply.
    let nofd = c
        .alloc_dma(0x40_0000, 0x2000, false)
        .expect("dma map without fd");
    nofd.write(0, &[7; 64]).expect("fill");
    c.write_u64(0, REG_DMA_IOVA, 0x40_0000).expect("iova");
    c.write_u64(0, REG_DMA_LEN, 64).expect("len");
    assert_eq!(c.read_u64(0, REG_DMA_DONE).expect("done"), 1);
    c.close();
    server.stop().expect("stop");
    st.flush();
    ct.flush();

    let s = read_lines(&server_file);
    let cl = read_lines(&client_file);
    assert!(s.iter().all(|v| v["side"] == "server"));
    assert!(cl.iter().all(|v| v["side"] == "client"));
    assert!(
        s.iter().chain(&cl).all(|v| v.get("error").is_none()),
        "a well-formed session has no errors"
    );

    // Ids and contents match across the socket, both ways.
    assert_mirrored(&cl, &s);
    assert_mirrored(&s, &cl);
    assert_eq!(
        cl.iter().filter(|v| v["direction"] == "send").count(),
        s.iter().filter(|v| v["direction"] == "recv").count()
    );
    assert_eq!(
        s.iter().filter(|v| v["direction"] == "send").count(),
        cl.iter().filter(|v| v["direction"] == "recv").count()
    );

    // VERSION first, with the capabilities as an object.
    assert_eq!(s[0]["cmd"], "VERSION");
    assert_eq!(s[0]["direction"], "recv");
    assert_eq!(cl[0]["cmd"], "VERSION");
    assert_eq!(cl[0]["direction"], "send");
    assert_eq!(s[0]["cmd_num"], 1);
    assert_eq!(s[0]["payload"]["major"], 0);
    assert_eq!(s[0]["payload"]["capabilities"]["max_msg_fds"], 16);
    let vr = one(&cl, "recv", "VERSION", true, &cl[0]["id"]);
    assert_eq!(vr["payload"]["capabilities"]["max_msg_fds"], 8);
    assert!(vr["payload"]["capabilities"]["max_data_xfer_size"].is_u64());

    // DEVICE_GET_INFO request and reply.
    let gi = &find(&s, "recv", "DEVICE_GET_INFO", false)[0];
    let gir = one(&s, "send", "DEVICE_GET_INFO", true, &gi["id"]);
    assert_eq!(gir["payload"]["num_regions"], 9);
    assert_eq!(gir["payload"]["num_irqs"], 5);
    // Region info for every region. BAR2 is asked twice: the 32-byte argsz gets argsz 80 back
    // (no caps, no fd), the retry with 80 gets the sparse areas and the fd.
    let asked: Vec<u64> = find(&s, "recv", "DEVICE_GET_REGION_INFO", false)
        .iter()
        .filter_map(|v| v["payload"]["index"].as_u64())
        .collect();
    assert_eq!(asked, vec![0, 1, 2, 2, 3, 4, 5, 6, 7, 8]);
    let bar2: Vec<&Value> = find(&cl, "recv", "DEVICE_GET_REGION_INFO", true)
        .into_iter()
        .filter(|v| v["payload"]["index"] == 2)
        .collect();
    assert_eq!(bar2.len(), 2);
    assert_eq!(
        (
            bar2[0]["nfds"].as_u64(),
            bar2[0]["payload"]["argsz"].as_u64()
        ),
        (Some(0), Some(80))
    );
    assert_eq!(
        bar2[0]["payload"]["sparse"].as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        one(&cl, "send", "DEVICE_GET_REGION_INFO", false, &bar2[1]["id"])["payload"]["argsz"],
        80
    );
    assert_eq!(bar2[1]["nfds"], 1);
    assert_eq!(
        bar2[1]["payload"]["sparse"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(bar2[1]["payload"]["sparse"][0]["offset"], 0x2000);

    // REGION_WRITE / REGION_READ: region, offset, count, and the data only as a length.
    let w = find(&s, "recv", "REGION_WRITE", false)
        .into_iter()
        .find(|v| v["payload"]["offset"] == 0x10)
        .expect("write");
    assert_eq!(w["payload"]["region"], 0);
    assert_eq!(w["payload"]["count"], 8);
    assert_eq!(w["payload"]["data_len"], 8);
    assert_eq!(w["size"], 16 + 16 + 8);
    let r = find(&cl, "send", "REGION_READ", false)
        .into_iter()
        .find(|v| v["payload"]["offset"] == 0x10)
        .expect("read");
    let rr = one(&cl, "recv", "REGION_READ", true, &r["id"]);
    assert_eq!(rr["payload"]["data_len"], 8);
    assert!(
        !rr.to_string().contains("1122334455667788"),
        "no data bytes in the trace"
    );

    // DMA_MAP with its fd, DMA_UNMAP echoed.
    let maps = find(&s, "recv", "DMA_MAP", false);
    assert_eq!(maps.len(), 2);
    let m = maps
        .iter()
        .find(|v| v["payload"]["address"] == 0x10_0000)
        .expect("fd map");
    assert_eq!(m["nfds"], 1);
    assert_eq!(m["payload"]["size"], 0x2000);
    assert_eq!(m["payload"]["flags"], 3);
    assert_eq!(m["payload"]["argsz"], 32);
    assert_eq!(m["payload"]["offset"], 0);
    let m2 = maps
        .iter()
        .find(|v| v["payload"]["address"] == 0x40_0000)
        .expect("fd-less map");
    assert_eq!(m2["nfds"], 0);
    let u = &find(&cl, "send", "DMA_UNMAP", false)[0];
    assert_eq!(u["payload"]["address"], 0x10_0000);
    let ur = one(&cl, "recv", "DMA_UNMAP", true, &u["id"]);
    assert_eq!(ur["payload"]["size"], 0x2000);

    // Error replies with their errno, recorded where sent and where received.
    let fe = &find(&s, "send", "DEVICE_FEATURE", true)[0];
    assert_eq!(fe["error_reply"], true);
    assert_eq!(fe["errno"], Errno::NOTSUP.raw_os_error());
    assert_eq!(fe["size"], 16);
    let fq = one(&s, "recv", "DEVICE_FEATURE", false, &fe["id"]);
    assert_eq!(fq["payload"]["feature"], 0x55);
    assert_eq!(fq["payload"]["get"], true);
    let irq = &find(&cl, "recv", "DEVICE_SET_IRQS", true)[0];
    assert_eq!(irq["errno"], Errno::INVAL.raw_os_error());
    let irq_req = one(&cl, "send", "DEVICE_SET_IRQS", false, &irq["id"]);
    assert_eq!(irq_req["payload"]["index"], 0);
    assert_eq!(irq_req["payload"]["start"], 5);
    assert_eq!(irq_req["payload"]["count"], 1);
    assert_eq!(irq_req["payload"]["action"], "mask");
    assert!(s
        .iter()
        .filter(|v| v["error_reply"] == false)
        .all(|v| v.get("errno").is_none()));

    // Server→client DMA on the main socket: the server sends the commands, the client
    // answers, ids from the server's own range.
    let dr = find(&s, "send", "DMA_READ", false);
    assert_eq!(dr.len(), 1);
    assert_eq!(dr[0]["socket"], "main");
    assert_eq!(dr[0]["payload"]["address"], 0x40_0000);
    assert_eq!(dr[0]["payload"]["count"], 64);
    assert!(dr[0]["id"].as_u64().is_some_and(|id| id >= 0x8000));
    let drr = one(&cl, "send", "DMA_READ", true, &dr[0]["id"]);
    assert_eq!(drr["payload"]["data_len"], 64);
    let dw = one(
        &cl,
        "recv",
        "DMA_WRITE",
        false,
        &find(&s, "send", "DMA_WRITE", false)[0]["id"],
    );
    assert_eq!(dw["payload"]["address"], 0x40_1000);
    assert_eq!(dw["payload"]["data_len"], 64);
    // The DMA exchange happens inside the REGION_WRITE that started it: after the server read
    // the write, before it replied to it.
    let at = |pred: &dyn Fn(&Value) -> bool| s.iter().position(pred).expect("record present");
    let len_write = at(&|v| {
        v["direction"] == "recv"
            && v["cmd"] == "REGION_WRITE"
            && v["payload"]["offset"] == REG_DMA_LEN
    });
    let len_id = s[len_write]["id"].clone();
    let len_reply = at(&|v| {
        v["direction"] == "send"
            && v["cmd"] == "REGION_WRITE"
            && v["reply"] == true
            && v["id"] == len_id
    });
    let read_sent = at(&|v| v["direction"] == "send" && v["cmd"] == "DMA_READ");
    let write_done =
        at(&|v| v["direction"] == "recv" && v["cmd"] == "DMA_WRITE" && v["reply"] == true);
    assert!(len_write < read_sent && read_sent < write_done && write_done < len_reply);
}

#[test]
fn server_dma_on_the_twin_socket_is_traced_as_twin() {
    let buf = Arc::new(TraceBuffer::new(10_000));
    let cbuf = Arc::new(TraceBuffer::new(10_000));
    let cfg = ServerConfig {
        trace: Some(Arc::new(TraceSwitch::with_tracer(buf.clone()))),
        ..ServerConfig::default()
    };
    let (server, path, _events) = start("trace-twin", cfg);
    let ccfg = ClientConfig {
        twin_socket: true,
        trace: Some(Arc::new(TraceSwitch::with_tracer(cbuf.clone()))),
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&path, ccfg).expect("connect");
    assert!(c.has_twin_socket());
    let nofd = c.alloc_dma(0x40_0000, 0x2000, false).expect("map");
    nofd.write(0, &[1; 32]).expect("fill");
    c.write_u64(0, REG_DMA_IOVA, 0x40_0000).expect("iova");
    c.write_u64(0, REG_DMA_LEN, 32).expect("len");
    assert_eq!(c.read_u64(0, REG_DMA_DONE).expect("done"), 1);
    c.close();
    server.stop().expect("stop");

    let s = buf.records();
    let cl = cbuf.records();
    // The VERSION reply carries the twin socket's fd.
    let vr = s
        .iter()
        .find(|r| r.command_name() == Some("VERSION") && r.direction == Direction::Send)
        .expect("version reply");
    assert_eq!(vr.nfds, 1);
    assert_eq!(vr.payload["capabilities"]["twin_socket"]["supported"], true);
    for (recs, side, dir) in [
        (&s, Side::Server, Direction::Send),
        (&s, Side::Server, Direction::Recv),
        (&cl, Side::Client, Direction::Recv),
        (&cl, Side::Client, Direction::Send),
    ] {
        let dma: Vec<_> = recs
            .iter()
            .filter(|r| matches!(r.command(), Some(c) if c == Command::DmaRead as u16 || c == Command::DmaWrite as u16))
            .filter(|r| r.direction == dir)
            .collect();
        assert_eq!(
            dma.len(),
            2,
            "{side:?} {dir:?}: one DMA_READ and one DMA_WRITE (command or reply)"
        );
        assert!(dma
            .iter()
            .all(|r| r.channel == Channel::Twin && r.side == side && r.error.is_none()));
    }
    assert!(s.iter().chain(&cl).filter(|r| r.channel == Channel::Main).all(|r| {
        !matches!(r.command(), Some(c) if c == Command::DmaRead as u16 || c == Command::DmaWrite as u16)
    }));
}

#[test]
fn tracing_is_switched_on_and_off_while_serving() {
    let (server, path, _events) = start("trace-toggle", ServerConfig::default());
    let handle = server.handle();
    assert!(!handle.trace().is_on(), "off unless asked for");
    let mut c = Client::connect(&path).expect("connect");
    c.read_u32(0, 0).expect("untraced read");

    let file = trace_path(&path, "toggle");
    let t = file_tracer(&file);
    assert!(handle.set_tracer(Some(t.clone())).is_none());
    let ct = Arc::new(TraceBuffer::new(100));
    c.set_tracer(Some(ct.clone()));
    c.read_u32(0, 0x20).expect("traced read");
    let lines = read_lines(&file);
    assert_eq!(lines.len(), 2, "request and reply: {lines:?}");
    assert_eq!(
        (
            lines[0]["direction"].as_str(),
            lines[1]["direction"].as_str()
        ),
        (Some("recv"), Some("send"))
    );
    assert_eq!(lines[0]["payload"]["offset"], 0x20);
    assert_eq!(ct.records().len(), 2);

    // Off: no more lines, on either side.
    assert!(handle.set_tracer(None).is_some());
    assert!(c.set_tracer(None).is_some());
    for i in 0..5 {
        c.write_u32(0, 0x30, i).expect("untraced write");
    }
    assert_eq!(read_lines(&file).len(), 2);
    assert_eq!(ct.records().len(), 2);
    assert_eq!(t.lines_written(), 2);

    // On again, into a second file through the shared switch.
    let file2 = trace_path(&path, "toggle2");
    let t2 = file_tracer(&file2);
    handle.trace().set(Some(t2.clone()));
    assert!(handle.trace().is_on());
    c.reset().expect("reset");
    let lines2 = read_lines(&file2);
    assert_eq!(lines2.len(), 2);
    assert_eq!(lines2[0]["cmd"], "DEVICE_RESET");
    assert_eq!(read_lines(&file).len(), 2, "the first file is left alone");
    c.close();
    server.stop().expect("stop");
}

#[test]
fn malformed_messages_are_traced_with_an_error_and_serving_goes_on() {
    let sbuf = Arc::new(TraceBuffer::new(1000));
    let cfg = ServerConfig {
        trace: Some(Arc::new(TraceSwitch::with_tracer(sbuf.clone()))),
        ..ServerConfig::default()
    };
    let (server, path, _events) = start("trace-bad", cfg);
    let file = trace_path(&path, "client-bad");
    let ct = file_tracer(&file);
    let mut c = Client::connect_with(
        &path,
        ClientConfig {
            trace: Some(Arc::new(TraceSwitch::with_tracer(ct.clone()))),
            ..ClientConfig::default()
        },
    )
    .expect("connect");
    sbuf.take();

    // REGION_READ with 8 payload bytes instead of 16.
    let id = c.next_msg_id();
    let mut b = MessageBuilder::command(id, Command::RegionRead);
    b.bytes(&[0xab; 8]);
    let reply = c.raw_exchange(&b.finish(), &[]).expect("raw exchange");
    let h = Header::decode(&reply.bytes).expect("reply header");
    assert!(h.is_error() && h.msg_id == id);
    // An unknown command.
    let id2 = c.next_msg_id();
    let mut b = MessageBuilder::with_flags(id2, 19, wire::FLAGS_TYPE_COMMAND);
    b.bytes(&[1, 2, 3]);
    c.raw_exchange(&b.finish(), &[]).expect("raw exchange");
    // A header whose msg_size is below 16 (the transport refuses it, the stream stays in sync).
    let id3 = c.next_msg_id();
    let mut hdr = [0u8; 16];
    Header {
        msg_id: id3,
        command: Command::RegionRead as u16,
        msg_size: 8,
        flags: 0,
        error_no: 0,
    }
    .encode(&mut hdr);
    c.raw_exchange(&hdr, &[]).expect("raw exchange");
    // The server goes on serving.
    c.write_u32(0, 0x40, 0xdead_beef)
        .expect("write after bad input");
    assert_eq!(
        c.read_u32(0, 0x40).expect("read after bad input"),
        0xdead_beef
    );
    c.close();
    server.stop().expect("stop");

    let s = sbuf.records();
    let by = |id: u16, dir: Direction| {
        s.iter()
            .find(|r| r.msg_id() == Some(id) && r.direction == dir)
            .cloned()
            .expect("record")
    };
    let bad = by(id, Direction::Recv);
    assert!(
        bad.error
            .as_deref()
            .is_some_and(|e| e.contains("REGION_READ")),
        "{:?}",
        bad.error
    );
    assert_eq!(bad.size, 24);
    assert_eq!(bad.payload["len"], 8);
    assert_eq!(bad.payload["head"], "abababababababab");
    let bad_reply = by(id, Direction::Send);
    assert_eq!(bad_reply.errno(), Some(Errno::INVAL.raw_os_error() as u32));
    assert!(bad_reply.error.is_none());
    let unknown = by(id2, Direction::Recv).to_json();
    assert_eq!(unknown["cmd"], "UNKNOWN");
    assert_eq!(unknown["cmd_num"], 19);
    assert!(unknown["error"]
        .as_str()
        .is_some_and(|e| e.contains("unknown command")));
    let small = by(id3, Direction::Recv);
    assert!(
        small
            .error
            .as_deref()
            .is_some_and(|e| e.contains("smaller")),
        "{:?}",
        small.error
    );
    assert_eq!(
        by(id3, Direction::Send).errno(),
        Some(Errno::INVAL.raw_os_error() as u32)
    );
    let last = s
        .iter()
        .rev()
        .find(|r| r.direction == Direction::Send)
        .expect("a reply");
    assert_eq!(last.command_name(), Some("REGION_READ"));
    assert!(last.error.is_none() && !last.is_error_reply());

    // The client's file has the same malformed message, as sent, with the same error, and
    // every line is JSON.
    let cl = read_lines(&file);
    let sent = one(&cl, "send", "REGION_READ", false, &Value::from(id));
    assert!(sent["error"].is_string());
    assert_eq!(sent["payload"]["head"], "abababababababab");
    let got = one(&cl, "recv", "REGION_READ", true, &Value::from(id));
    assert_eq!(got["errno"], Errno::INVAL.raw_os_error());
}
