//! A firmware update over MQTT through a real mosquitto broker: the gateway's flash code path
//! (`tianzhong flash --node ID --mqtt HOST:PORT`, its site found from the node's retained
//! status) sends a signed image to a simulated MQTT node that runs the firmware's real update
//! receiver on simulated flash. Mid-image the broker is killed (SIGKILL: every message in
//! flight is lost, both sides' connections drop) and started again a second later; the
//! transfer goes on from the chunk the node reports wanting, not from zero. The node resets
//! into the new image, comes back online with its version, and confirms it on the gateway's
//! confirm.
//!
//! Then a second image is sent without the confirm (`--no-confirm`): the node runs it on trial;
//! the same flash again sends nothing and only confirms it.
//!
//! Before the update, a payload that is no update request, published on the node's `fwupdate`
//! topic by another client, is answered on `fwstatus` as malformed and counted by the node.
//!
//! Checked against the simulator, not the sender's own account: the version the node runs,
//! its boot state in flash (confirmed, not on trial), how many update messages it took, and how
//! many times it reset.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Event, Packet, QoS};
use tianzhong_gateway::flash_mqtt::{MqttFlashOptions, MqttTarget, flash_mqtt};
use tianzhong_protocol::NodeId;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_protocol::update::{Answers, MQTT_CHUNK, Phase, Reason, UpdateReport};
use tianzhong_simulator::update::{BootKind, sim_image};
use tianzhong_tests::fleet::{FleetBuilder, SITE};
use tianzhong_tests::services::Mosquitto;

/// Chunks the node must have before the broker is killed: about half the image.
const CUT_AT_CHUNK: u32 = 14;
/// Chunks in flight: each go-back re-sends at most this many, so even a few go-backs (a
/// report stalled past the timeout on a loaded machine costs one more) stay well below the
/// 14 chunks that starting over would re-send.
const IN_FLIGHT: u32 = 4;

/// The chunk the node wanted when the broker was killed, and the thread starting it again.
type Cut = (u32, std::thread::JoinHandle<()>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_node_is_flashed_across_a_broker_crash_and_confirms_the_new_image() {
    let test_started = Instant::now();
    let broker = Mosquitto::start().expect("mosquitto starts");
    let broker_addr = broker.addr();
    let mut builder = FleetBuilder::new().unwrap();
    let ids = builder.mqtt("air", broker_addr, 1);
    let fleet = builder.start().await.unwrap();
    assert!(fleet.wait_mqtt_connected(Duration::from_secs(10)).await);
    let index = fleet.fleet.index_of(&ids[0]).unwrap();
    let factory = FirmwareVersion {
        major: 1,
        minor: 0,
        patch: 0,
    };
    assert_eq!(fleet.fleet.node(index).running_firmware(), factory);

    let garbage = malformed_request_answer(broker_addr.port(), &ids[0]).await;
    assert_eq!(
        (garbage.answers, garbage.phase, garbage.reason()),
        (
            Answers::Malformed,
            Phase::Idle,
            Some(Reason::MalformedRequest)
        )
    );
    assert_eq!((garbage.running, garbage.trial), (factory, false));

    let new = FirmwareVersion {
        major: 1,
        minor: 1,
        patch: 0,
    };
    // 28 KiB of payload: 29 chunks of 1 KiB with header and trailer, within the 32 KiB slot.
    let image = sim_image("TZ-E2E", new, 2, 28 * 1024);
    let chunks = image.len().div_ceil(usize::from(MQTT_CHUNK)) as u32;
    assert!(chunks > 2 * CUT_AT_CHUNK - 2, "{chunks} chunks");

    // The cut: when the node first reports having CUT_AT_CHUNK chunks, the broker dies; a
    // second later it is started again (on the same port, without its retained messages).
    let broker = Arc::new(Mutex::new(broker));
    let cut: Arc<Mutex<Option<Cut>>> = Arc::default();
    let progress = {
        let broker = Arc::clone(&broker);
        let cut = Arc::clone(&cut);
        move |p: &tianzhong_gateway::flash::Progress| {
            let wanted = (p.done / usize::from(MQTT_CHUNK)) as u32;
            let mut cut = cut.lock().unwrap();
            if cut.is_none() && wanted >= CUT_AT_CHUNK {
                broker.lock().unwrap().kill();
                let broker = Arc::clone(&broker);
                let restart = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    broker
                        .lock()
                        .unwrap()
                        .restart()
                        .expect("mosquitto restarts");
                });
                *cut = Some((wanted, restart));
            }
            ControlFlow::Continue(())
        }
    };
    let target = MqttTarget {
        broker: broker_addr.to_string(),
        site: None,
        node: NodeId::new(&ids[0]).unwrap(),
        timeout: Duration::from_secs(1),
    };
    let options = MqttFlashOptions {
        in_flight: IN_FLIGHT,
        give_up: Duration::from_secs(20),
        boot_timeout: Duration::from_secs(20),
        confirm: true,
    };
    let flash_started = Instant::now();
    let report = flash_mqtt(&target, &image, options, progress)
        .await
        .unwrap_or_else(|e| panic!("flash over MQTT: {e}"));
    let flash_time = flash_started.elapsed();
    let (cut_at, restart) = cut.lock().unwrap().take().expect("the broker was cut");
    restart.join().unwrap();
    eprintln!("{report:?}; cut with the node wanting chunk {cut_at}; flash took {flash_time:?}");

    // The sender's account: one offer, the site found, the cut seen, and every go-back to a
    // chunk at or past where the node stood at the cut: the transfer resumed, it did not start
    // over.
    assert_eq!(report.site.as_str(), SITE);
    assert_eq!((report.chunks, report.chunk_size), (chunks, MQTT_CHUNK));
    assert_eq!(report.resumed_at, 0);
    assert!(report.reconnects >= 1, "{report:?}");
    assert!(!report.went_back_to.is_empty(), "{report:?}");
    assert!(
        report.went_back_to.iter().all(|&c| c >= cut_at),
        "went back before the cut's chunk {cut_at}: {report:?}"
    );
    assert!(
        report.chunks_resent < cut_at,
        "resending {} chunks is no better than starting over from 0: {report:?}",
        report.chunks_resent
    );
    assert_eq!(report.chunks_sent, chunks + report.chunks_resent);
    assert_eq!(report.version, new);

    // The node's account: it runs the new image, confirmed in its boot state, after one reset;
    // it took every chunk at least once and far fewer than twice the image (the messages the
    // broker lost never reached it).
    let stats = fleet.mqtt_stats();
    let stats = stats[0];
    {
        let mut node = fleet.fleet.node(index);
        assert_eq!(node.running_firmware(), new);
        let update = node.firmware_update();
        assert_eq!(update.version(), new);
        assert_eq!(update.running.kind, BootKind::Confirmed);
        assert_eq!(update.running.state.trial, None);
    }
    assert_eq!(stats.update_resets, 1, "{stats:?}");
    assert_eq!(stats.update_malformed, 1, "{stats:?}");
    assert_eq!(report.malformed_reports, 0);
    assert!(stats.reconnects >= 2, "the cut and the reset: {stats:?}");
    // The malformed payload, offer, finish and confirm, plus chunks and status requests.
    let taken = stats.update_requests;
    assert!(
        taken >= u64::from(chunks) + 4 && taken < u64::from(chunks + cut_at) + 4,
        "the node took {taken} update messages for {chunks} chunks: {stats:?}"
    );

    // Left on trial (`--no-confirm`), then the same command again: nothing is sent a second
    // time, the node only confirms.
    let newer = FirmwareVersion {
        major: 1,
        minor: 2,
        patch: 0,
    };
    let small = sim_image("TZ-E2E", newer, 3, 6 * 1024);
    let small_chunks = small.len().div_ceil(usize::from(MQTT_CHUNK)) as u64;
    let unconfirmed = MqttFlashOptions {
        confirm: false,
        ..options
    };
    let left = flash_mqtt(&target, &small, unconfirmed, |_| ControlFlow::Continue(()))
        .await
        .unwrap_or_else(|e| panic!("flash without confirm: {e}"));
    assert!(!left.confirmed && !left.found_on_trial, "{left:?}");
    {
        let mut node = fleet.fleet.node(index);
        let update = node.firmware_update();
        assert_eq!(update.version(), newer);
        assert!(
            matches!(update.running.kind, BootKind::Trial { .. }),
            "{:?}",
            update.running.kind
        );
    }
    let before = fleet.mqtt_stats()[0];
    let again = flash_mqtt(&target, &small, options, |_| ControlFlow::Continue(()))
        .await
        .unwrap_or_else(|e| panic!("flash of the image on trial: {e}"));
    assert!(again.found_on_trial && again.confirmed, "{again:?}");
    assert_eq!(again.chunks_sent, 0);
    let after = fleet.mqtt_stats()[0];
    // An offer and a confirm (and a status request or a repeat per timeout): no chunk.
    let taken_again = after.update_requests - before.update_requests;
    assert!(
        (2..small_chunks).contains(&taken_again),
        "{taken_again} messages to confirm: {again:?}"
    );
    assert_eq!(after.update_resets, 2, "{after:?}");
    let mut node = fleet.fleet.node(index);
    let update = node.firmware_update();
    assert_eq!(
        (update.version(), &update.running.kind),
        (newer, &BootKind::Confirmed)
    );
    eprintln!(
        "node took {taken} update messages for the first image; test took {:?}",
        test_started.elapsed()
    );
}

/// Publishes two bytes that are no update request on the node's `fwupdate` topic, as another
/// client, and returns the report the node answers with on `fwstatus`.
async fn malformed_request_answer(port: u16, node: &str) -> UpdateReport {
    let options = rumqttc::MqttOptions::new("e2e-garbage", "127.0.0.1", port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let base = format!("tianzhong/v1/{SITE}/{node}");
    client
        .subscribe(format!("{base}/fwstatus"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await.expect("broker connection") {
                // Subscribed first, so that the answer cannot pass unseen.
                Event::Incoming(Packet::SubAck(_)) => client
                    .publish(
                        format!("{base}/fwupdate"),
                        QoS::AtLeastOnce,
                        false,
                        vec![0xFF, 0x01],
                    )
                    .await
                    .unwrap(),
                Event::Incoming(Packet::Publish(p)) => {
                    return UpdateReport::decode(&p.payload).expect("a report");
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the node answers within 10 s");
    let _ = client.disconnect().await;
    answer
}
