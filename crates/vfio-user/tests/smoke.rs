mod common;

use emudev_vfio_user::client::Client;
use emudev_vfio_user::server::ServerConfig;

#[test]
fn connect_read_write_bar0() {
    let (server, path, events) = common::start("smoke", ServerConfig::default());
    let mut c = Client::connect(&path).unwrap();
    assert_eq!(c.device_info().num_regions, 9);
    c.write_u64(0, 0x10, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(c.read_u64(0, 0x10).unwrap(), 0x1122_3344_5566_7788);
    c.close();
    server.stop().unwrap();
    assert_eq!(
        events.connected.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(!path.exists());
}
