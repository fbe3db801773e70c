//! TX offloads over a real vfio-user socket: the client driver posts raw descriptors asking
//! for what a Linux iavf guest asks for (IPv4 header and UDP/TCP checksum insertion, TSO with
//! a context descriptor), the loopback back-end returns what the device sent, and the frames
//! received are checked with a checksum verifier written here. Also: a refused request is a
//! TX error and the queue keeps working; the polled data path segments the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{rx_all, rx_wait, serve, unique_number, Vf};
use emudev_iavf::datapath::{self, Loopback, PollConfig, QueueStats};
use emudev_iavf::driver::{DriverConfig, Seg};
use emudev_iavf::spec::desc::{tx_cmd, tx_ctx, tx_offset, TxContextDesc, TxDesc};
use emudev_iavf::IavfConfig;

/// A VF with a loopback data path (inline, or polled by a worker) and a driver brought up
/// with 2 KiB buffers (MTU 1500 frames fit one).
fn up(polled: bool) -> Vf {
    let device = IavfConfig::new(&format!("emu_iavf_off{}", unique_number()));
    let cfg = DriverConfig::default();
    serve(
        "off",
        device,
        |h| {
            if polled {
                datapath::attach_polled(h, Arc::new(Loopback), PollConfig::default())
            } else {
                datapath::attach(h, Arc::new(Loopback))
            }
        },
        &cfg,
        false,
    )
    .0
}

// ----- an independent verifier ------------------------------------------------------------

/// The Internet checksum of `bytes`, 16-bit words one at a time (0 when a correct checksum is
/// included).
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = (u32::from(pair[0]) << 8) | u32::from(pair.get(1).copied().unwrap_or(0));
        sum += word;
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether a frame's IPv4 header (at 14, 20 bytes) and its TCP or UDP checksum verify.
fn ipv4_checksums_ok(f: &[u8], proto: u8) -> bool {
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let l4 = &f[34..14 + total];
    let mut pseudo = f[26..34].to_vec();
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    internet_checksum(&f[14..34]) == 0 && internet_checksum(&pseudo) == 0
}

// ----- frames ------------------------------------------------------------------------------

/// Ethernet (unicast) + IPv4 (ID 0x4321, header checksum 0) + `l4`.
fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x22, 0x02, 0, 0, 0, 0, 0x11, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0x43, 0x21, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&[192, 168, 7, 1, 192, 168, 7, 2]);
    f.extend_from_slice(l4);
    f
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// The pseudo-header sum Linux leaves in the L4 checksum field (CHECKSUM_PARTIAL).
fn partial_sum(f: &[u8], proto: u8, l4_len: usize) -> u16 {
    let mut p = f[26..34].to_vec();
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    !internet_checksum(&p)
}

const OFF_UDP: u32 = tx_offset::encode(14, 20, 8);
const OFF_TCP: u32 = tx_offset::encode(14, 20, 20);

/// Copies `frame` into fresh pool buffers of queue 0, cut at `cuts`, and returns one data
/// descriptor per piece with `cmd` and `offset` (EOP on the last), and the buffers used.
fn place(
    vf: &mut Vf,
    frame: &[u8],
    cuts: &[usize],
    cmd: u16,
    offset: u32,
) -> (Vec<TxDesc>, Vec<u32>) {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(frame.len());
    let mut descs = Vec::new();
    let mut bufs = Vec::new();
    for (k, w) in bounds.windows(2).enumerate() {
        let piece = &frame[w[0]..w[1]];
        let buf = vf.d().alloc_buf(0).expect("alloc").expect("a free buffer");
        vf.d().write_buf(0, buf, 0, piece).expect("write");
        let (_, iova) = vf.d().queue_pairs()[0].buffer(buf).expect("buffer");
        let eop = if k + 2 == bounds.len() {
            tx_cmd::EOP
        } else {
            0
        };
        descs.push(TxDesc::data(iova, piece.len() as u16, cmd | eop, offset, 0));
        bufs.push(buf);
    }
    (descs, bufs)
}

/// Waits (bounded) until queue 0's TX descriptors are done, then returns `bufs` to the pool.
fn release(vf: &mut Vf, bufs: &[u32]) {
    let end = Instant::now() + Duration::from_secs(2);
    while vf.d().tx_complete(0).expect("clean") != 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_micros(50));
    }
    assert_eq!(vf.d().tx_complete(0).expect("clean"), 0, "TX done");
    let segs: Vec<Seg> = bufs
        .iter()
        .map(|&buf| Seg {
            buf,
            len: 0,
            eop: true,
        })
        .collect();
    vf.d().free_segs(0, &segs).expect("free");
}

/// Queue 0's counters once `tx_packets + tx_errors` reach `want`, or after two seconds.
fn tx_stats_at(vf: &Vf, want: u64) -> QueueStats {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let s = vf.stats.queue(0).expect("queue 0");
        if s.tx_packets + s.tx_errors >= want || Instant::now() >= end {
            return s;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// A TSO super-frame as Linux hands it over: TCP/IPv4 with `body`, IPv4 total length 0, the
/// TCP checksum field holding the pseudo-header sum without the length.
fn tso_frame(seq: u32, body: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0x1F, 0x90, 0xC3, 0x50];
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&7u32.to_be_bytes());
    // Data offset 5 words, ACK|PSH|FIN.
    tcp.extend_from_slice(&[5 << 4, 0x19, 0x20, 0x00, 0, 0, 0, 0]);
    tcp.extend_from_slice(body);
    let mut f = ipv4(6, &tcp);
    f[16..18].fill(0);
    let seed = partial_sum(&f, 6, 0);
    f[50..52].copy_from_slice(&seed.to_be_bytes());
    f
}

/// Posts a 3000-byte TSO packet at MSS 1000 over three buffers and checks the three segments
/// that come back (`rx` receives them).
fn tso_round(vf: &mut Vf, rx: fn(&mut Vf) -> Vec<Vec<u8>>) {
    let body = payload(3000, 3);
    let seq = 0x0102_0304;
    let f = tso_frame(seq, &body);
    let ctx = TxContextDesc::new(tx_ctx::CMD_TSO, 3000, 1000, 0).to_raw();
    let cmd = tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_TCP;
    let (data, bufs) = place(vf, &f, &[54, 1554], cmd, OFF_TCP);
    assert_eq!(data.len(), 3, "headers, 1500, 1500");
    let before = vf.stats.queue(0).expect("q0");
    let mut descs = vec![ctx];
    descs.extend(data);
    assert!(vf.d().tx_post_raw(0, &descs).expect("post"));
    let got = rx(vf);
    assert_eq!(got.len(), 3, "three segments");
    let mut joined = Vec::new();
    for (i, s) in got.iter().enumerate() {
        assert_eq!(s.len(), 54 + 1000, "segment {i}");
        assert!(ipv4_checksums_ok(s, 6), "segment {i} checksums");
        assert_eq!(
            u16::from_be_bytes([s[18], s[19]]),
            0x4321 + i as u16,
            "IP ID"
        );
        let got_seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(got_seq, seq + 1000 * i as u32, "sequence {i}");
        let fin_psh = s[47] & 0x09;
        assert_eq!(fin_psh, if i == 2 { 0x09 } else { 0 }, "FIN/PSH {i}");
        joined.extend_from_slice(&s[54..]);
    }
    assert_eq!(joined, body);
    let after = tx_stats_at(vf, before.tx_packets + before.tx_errors + 3);
    assert_eq!(after.tx_packets - before.tx_packets, 3, "three TX packets");
    assert_eq!(after.tx_bytes - before.tx_bytes, 3 * 1054);
    assert_eq!(after.tx_errors, before.tx_errors);
    release(vf, &bufs);
}

#[test]
fn udp_ipv4_checksums_are_completed_on_the_way_out() {
    let mut vf = up(false);
    let mut udp = vec![0x13, 0x88, 0x00, 0x35];
    udp.extend_from_slice(&108u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload(100, 1));
    let mut f = ipv4(17, &udp);
    let seed = partial_sum(&f, 17, 108);
    f[40..42].copy_from_slice(&seed.to_be_bytes());
    assert!(!ipv4_checksums_ok(&f, 17), "not valid as posted");
    let cmd = tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_UDP;
    let (descs, bufs) = place(&mut vf, &f, &[], cmd, OFF_UDP);
    assert!(vf.d().tx_post_raw(0, &descs).expect("post"));
    let got = rx_all(&mut vf, 0);
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert!(ipv4_checksums_ok(g, 17), "valid IPv4 and UDP checksums");
    // Nothing else changed.
    let mut expect = f.clone();
    expect[24..26].copy_from_slice(&g[24..26]);
    expect[40..42].copy_from_slice(&g[40..42]);
    assert_eq!(g, &expect);
    let q = vf.stats.queue(0).expect("q0");
    assert_eq!((q.tx_packets, q.tx_errors, q.rx_packets), (1, 0, 1));
    assert_eq!((q.tx_offloaded, q.tx_tso), (1, 0));
    release(&mut vf, &bufs);
}

#[test]
fn a_tso_packet_comes_back_as_three_valid_segments() {
    let mut vf = up(false);
    tso_round(&mut vf, |vf| rx_all(vf, 0));
    // Again: the device's buffers are reused, and the result is the same.
    tso_round(&mut vf, |vf| rx_all(vf, 0));
    let q = vf.stats.queue(0).expect("q0");
    assert_eq!((q.tx_packets, q.rx_packets, q.tx_errors), (6, 6, 0));
    assert_eq!(
        (q.tx_offloaded, q.tx_tso),
        (6, 2),
        "six segments of two TSO packets"
    );
}

#[test]
fn the_polled_data_path_segments_too() {
    let mut vf = up(true);
    tso_round(&mut vf, |vf| rx_wait(vf, 0, 3));
}

#[test]
fn a_refused_request_is_a_tx_error_and_the_queue_goes_on() {
    let mut vf = up(false);
    let f = ipv4(
        17,
        &[
            0x13, 0x88, 0x00, 0x35, 0, 26, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
            16, 17, 18,
        ],
    );
    assert_eq!(f.len(), 60);
    // MACLEN 100 bytes: the IP header would start past the 60-byte frame.
    let bad_off = tx_offset::encode(100, 20, 8);
    let cmd = tx_cmd::IIPT_IPV4_CSUM | tx_cmd::L4T_EOFT_UDP;
    let (descs, bufs) = place(&mut vf, &f, &[30], cmd, bad_off);
    assert!(vf.d().tx_post_raw(0, &descs).expect("post"));
    assert!(rx_all(&mut vf, 0).is_empty(), "nothing sent");
    let q = vf.stats.queue(0).expect("q0");
    assert_eq!((q.tx_errors, q.tx_packets, q.rx_packets), (1, 0, 0));
    release(&mut vf, &bufs);
    // The same frame with the right OFFSET goes through.
    let (descs, bufs) = place(&mut vf, &f, &[30], cmd, OFF_UDP);
    assert!(vf.d().tx_post_raw(0, &descs).expect("post"));
    let got = rx_all(&mut vf, 0);
    assert_eq!(got.len(), 1);
    assert!(ipv4_checksums_ok(&got[0], 17));
    // And a plain frame from the ordinary TX path, untouched.
    let plain = common::frame(64, 9);
    assert_eq!(vf.d().tx_burst(0, &[&plain]).expect("tx"), 1);
    assert_eq!(rx_all(&mut vf, 0), vec![plain]);
    let q = vf.stats.queue(0).expect("q0");
    assert_eq!((q.tx_errors, q.tx_packets, q.rx_packets), (1, 2, 2));
    assert_eq!(vf.d().get_stats().expect("GET_STATS").tx_errors, 1);
    release(&mut vf, &bufs);
}
