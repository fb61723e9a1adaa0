//! A doorbell the daemon decided to ring for data the app then read before the byte landed:
//! `AppEnd::settled_doorbells` reports it as in flight until the daemon counts it, then as
//! owed, so the app can drop it and its fd is not left readable with nothing to read. A
//! doorbell rung for the app's current arm is never included.

use weft_ipc::ring::{RegionKind, RxWaitDecision, SharedRegion, Wakeup};

#[test]
fn a_doorbell_for_data_already_read_is_reported_in_flight_then_owed() {
    let region = SharedRegion::anonymous(RegionKind::Stream, 4096, 4096).unwrap();
    let (mut app, mut daemon) = region.split().unwrap();

    // The daemon publishes while the app is armed (regions start armed) and takes the arm.
    assert_eq!(daemon.rx().write(b"hello").unwrap(), 5);
    assert_eq!(daemon.after_rx_publish(), Wakeup::Needed);

    // Before the doorbell byte is written and counted, the app reads the data directly.
    let mut buf = [0u8; 16];
    assert_eq!(app.rx().read(&mut buf).unwrap(), 5);
    match app.prepare_rx_sleep().unwrap() {
        RxWaitDecision::Sleep { drain_doorbells } => assert_eq!(drain_doorbells, 0),
        RxWaitDecision::Retry => panic!("RX is empty"),
    }
    app.doorbells_drained(0).unwrap();
    assert_eq!(
        app.settled_doorbells(),
        None,
        "the taken arm's doorbell is in flight"
    );

    // The byte lands and is counted: it is owed, and draining it settles the account.
    daemon.doorbell_written();
    assert_eq!(app.settled_doorbells(), Some(1));
    app.doorbells_drained(1).unwrap();
    assert_eq!(app.settled_doorbells(), Some(0));

    // New data for the current arm: its doorbell belongs to the sleeper and is not owed.
    assert_eq!(daemon.rx().write(b"x").unwrap(), 1);
    assert_eq!(daemon.after_rx_publish(), Wakeup::Needed);
    daemon.doorbell_written();
    assert_eq!(app.settled_doorbells(), Some(0));
    // Once read, the next arm sees that arm taken and owes its doorbell.
    assert_eq!(app.rx().read(&mut buf).unwrap(), 1);
    match app.prepare_rx_sleep().unwrap() {
        RxWaitDecision::Sleep { drain_doorbells } => assert_eq!(drain_doorbells, 1),
        RxWaitDecision::Retry => panic!("RX is empty"),
    }
    app.doorbells_drained(1).unwrap();
    assert_eq!(app.settled_doorbells(), Some(0));
}
