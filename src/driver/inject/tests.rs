use super::*;

fn at(anchor: Anchor, offset_ms: u64) -> InjectAt {
    InjectAt { anchor, offset_ms }
}

fn one(text: &str) -> InjectSpec {
    let plan = InjectPlan::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(plan.specs.len(), 1, "{text}");
    plan.specs[0]
}

fn bad(text: &str) -> InjectError {
    InjectPlan::parse(text).expect_err(text)
}

#[test]
fn every_fault_parses() {
    let disconnect = |streams, at| Fault::Timed(TimedFault::Disconnect { streams, at });
    let cases = [
        ("disconnect@start+40", disconnect(Streams::Both, at(Anchor::Start, 40))),
        ("disconnect-bulk@switchover+0", disconnect(Streams::Bulk, at(Anchor::Switchover, 0))),
        ("disconnect-urgent@resume+7", disconnect(Streams::Urgent, at(Anchor::Resume, 7))),
        ("disconnect@resume", disconnect(Streams::Both, at(Anchor::Resume, 0))),
        (
            "stall@start+100:50",
            Fault::Timed(TimedFault::Stall { at: at(Anchor::Start, 100), dur_ms: 50 }),
        ),
        (
            "stall@switchover:1",
            Fault::Timed(TimedFault::Stall { at: at(Anchor::Switchover, 0), dur_ms: 1 }),
        ),
        ("corrupt@20", Fault::Corrupt { nth: 20 }),
        ("refuse-reconnect", Fault::RefuseReconnect),
    ];
    for (text, fault) in cases {
        assert_eq!(one(text), InjectSpec { side: None, fault }, "{text}");
    }
}

#[test]
fn side_prefixes_parse() {
    assert_eq!(one("src:corrupt@3").side, Some(Side::Source));
    assert_eq!(one("dst:disconnect@start+5").side, Some(Side::Dest));
    assert_eq!(one("dst:stall@start+5:10").side, Some(Side::Dest));
    assert_eq!(one("dst:refuse-reconnect").side, Some(Side::Dest));
    // Spaces around the commas are allowed.
    let plan = InjectPlan::parse("dst:disconnect@start+5 , refuse-reconnect").expect("plan");
    assert_eq!(plan.specs.len(), 2);
}

/// Whether an error is the one a bad spec should give.
type IsExpected = fn(&InjectError) -> bool;

#[test]
fn bad_specs_say_which_and_why() {
    let cases: &[(&str, IsExpected)] = &[
        ("", |e| matches!(e, InjectError::Empty { .. })),
        ("corrupt@3,,refuse-reconnect", |e| matches!(e, InjectError::Empty { .. })),
        ("corrupt@3,", |e| matches!(e, InjectError::Empty { .. })),
        ("both:corrupt@3", |e| matches!(e, InjectError::UnknownSide { got, .. } if got == "both")),
        (
            "explode@start",
            |e| matches!(e, InjectError::UnknownFault { got, .. } if got == "explode"),
        ),
        ("disconnect", |e| matches!(e, InjectError::MissingArgument { fault: "disconnect", .. })),
        ("disconnect-bulk", |e| {
            matches!(e, InjectError::MissingArgument { fault: "disconnect-bulk", .. })
        }),
        ("stall", |e| matches!(e, InjectError::MissingArgument { fault: "stall", .. })),
        ("corrupt", |e| matches!(e, InjectError::MissingArgument { fault: "corrupt", .. })),
        ("refuse-reconnect@start", |e| matches!(e, InjectError::UnexpectedArgument { .. })),
        (
            "disconnect@later+5",
            |e| matches!(e, InjectError::UnknownAnchor { got, .. } if got == "later"),
        ),
        ("disconnect@start+", |e| matches!(e, InjectError::BadNumber { what: "offset", .. })),
        ("disconnect@start+5ms", |e| matches!(e, InjectError::BadNumber { what: "offset", .. })),
        ("disconnect@start++5", |e| matches!(e, InjectError::BadNumber { what: "offset", .. })),
        ("disconnect@start+-5", |e| matches!(e, InjectError::BadNumber { what: "offset", .. })),
        ("disconnect@start+3600001", |e| {
            matches!(e, InjectError::BadNumber { what: "offset", .. })
        }),
        ("disconnect@start+5:10", |e| matches!(e, InjectError::UnexpectedDuration { .. })),
        ("stall@start+5", |e| matches!(e, InjectError::MissingDuration { .. })),
        ("stall@start+5:0", |e| matches!(e, InjectError::BadNumber { what: "stall duration", .. })),
        ("stall@start+5:x", |e| matches!(e, InjectError::BadNumber { what: "stall duration", .. })),
        ("stall@start+5:600001", |e| {
            matches!(e, InjectError::BadNumber { what: "stall duration", .. })
        }),
        ("corrupt@0", |e| matches!(e, InjectError::BadNumber { what: "frame number", .. })),
        ("corrupt@-1", |e| matches!(e, InjectError::BadNumber { what: "frame number", .. })),
        ("corrupt@99999999999999999999", |e| {
            matches!(e, InjectError::BadNumber { what: "frame number", .. })
        }),
        ("corrupt@3,src:corrupt@4", |e| {
            matches!(e, InjectError::DuplicateCorrupt { side: Side::Source, .. })
        }),
    ];
    for (text, is_expected) in cases {
        let err = bad(text);
        assert!(is_expected(&err), "{text}: {err:?}");
        // The message names the spec at fault.
        let shown = err.to_string();
        assert!(shown.starts_with("--inject"), "{text}: {shown}");
    }
    let err = bad("disconnect@start+5,stall@start+5");
    assert_eq!(err, InjectError::MissingDuration { spec: "stall@start+5".into() });
    assert!(err.to_string().contains("`stall@start+5`"), "{err}");
}

#[test]
fn too_many_specs_are_refused() {
    let many = vec!["refuse-reconnect"; MAX_SPECS + 1].join(",");
    assert!(matches!(bad(&many), InjectError::TooMany { max: MAX_SPECS, .. }));
    let enough = vec!["refuse-reconnect"; MAX_SPECS].join(",");
    assert_eq!(InjectPlan::parse(&enough).expect("at the limit").specs.len(), MAX_SPECS);
}

#[test]
fn a_corrupt_per_side_is_fine() {
    let plan = InjectPlan::parse("src:corrupt@3,dst:corrupt@4").expect("one per side");
    assert_eq!(plan.for_side(Side::Source).corrupt_bulk_frame, Some(3));
    assert_eq!(plan.for_side(Side::Dest).corrupt_bulk_frame, Some(4));
}

#[test]
fn defaults_pick_the_sides() {
    let plan = InjectPlan::parse("disconnect@start+5,corrupt@9,stall@start+1:2,refuse-reconnect")
        .expect("plan");
    let src = plan.for_side(Side::Source);
    let dst = plan.for_side(Side::Dest);
    // Disconnects and refuse-reconnect go to both sides; corrupt and stall to the source.
    assert_eq!(src.timed.len(), 2);
    assert_eq!(src.corrupt_bulk_frame, Some(9));
    assert!(src.refuse_reconnect);
    assert_eq!(
        dst.timed,
        vec![TimedFault::Disconnect { streams: Streams::Both, at: at(Anchor::Start, 5) }]
    );
    assert_eq!(dst.corrupt_bulk_frame, None);
    assert!(dst.refuse_reconnect);

    let plan = InjectPlan::parse("dst:disconnect@start+5,dst:refuse-reconnect").expect("plan");
    assert!(plan.for_side(Side::Source).is_empty());
    assert!(!plan.for_side(Side::Dest).is_empty());
}

#[test]
fn a_lone_host_refuses_the_other_sides_specs() {
    let plan = InjectPlan::parse("corrupt@2,dst:stall@start+1:5").expect("plan");
    let err = plan.only_for(Side::Source).expect_err("dst: spec on the source");
    assert_eq!(
        err,
        InjectError::WrongSide {
            spec: "dst:stall@start+1:5".into(),
            given: Side::Dest,
            this: Side::Source
        }
    );
    let dst = plan.only_for(Side::Dest).expect("every spec is the destination's");
    assert_eq!(dst.corrupt_bulk_frame, Some(2));
    assert_eq!(dst.timed.len(), 1);
}

#[test]
fn a_side_plan_renders_back_to_itself() {
    let text = "disconnect-urgent@resume+3,stall@switchover+0:40,disconnect@start+9,\
                corrupt@12,refuse-reconnect";
    let plan = InjectPlan::parse(text).expect("plan").for_side(Side::Source);
    let shown = plan.to_string();
    let again = InjectPlan::parse(&shown).expect("rendered").only_for(Side::Source).expect("mine");
    assert_eq!(again, plan, "{shown}");
    assert_eq!(SidePlan::default().to_string(), "");
}

#[test]
fn points_fall_due_from_their_anchor() {
    let anchors = Anchors { start_ns: 1_000, switchover_ns: None, resume_ns: Some(5_000_000) };
    assert_eq!(anchors.due_ns(at(Anchor::Start, 2)), Some(2_001_000));
    assert_eq!(anchors.due_ns(at(Anchor::Switchover, 0)), None);
    assert_eq!(anchors.due_ns(at(Anchor::Resume, 1)), Some(6_000_000));
}

#[test]
fn the_log_is_shared_with_its_clones() {
    let injection = Injection::new(Side::Dest, SidePlan::default());
    let reader = injection.log.clone();
    injection.log.push(Injected { side: Side::Dest, what: "stall@start+0:1".into(), at_ms: 0.5 });
    assert_eq!(reader.entries().len(), 1);
    let json = serde_json::to_string(&reader.entries()[0]).expect("json");
    assert!(json.contains("\"side\":\"destination\""), "{json}");
}
