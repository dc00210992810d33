//! `outrider bench analysis` on a tiny corpus: the real manager and judge against a small
//! simulated fleet on a paused clock. Asserts the figures' shape, that a gross defect is
//! caught and that a healthy plan completes; no timing.

use std::time::Duration;

use outrider_devtools::bench::analysis::{Case, End, Kind, Setup, Shape, figures, run_corpus};
use outrider_sim::Effect;

#[test]
fn a_tiny_corpus_catches_a_crash_and_big_errors_and_passes_a_healthy_version() {
    let shape = Shape { services: 8, instances: 80 };
    let setup =
        Setup { shape, bake: Duration::from_secs(300), report_interval: Duration::from_secs(15), deploys_per_day: 2.0 };
    let traits = |k: &str, v: &str| [(k.to_owned(), v.to_owned())].into();
    let case = |index, kind, traits| Case {
        index,
        kind,
        traits,
        seed: 40 + u64::from(index),
        time_of_day: Duration::from_secs(36_000),
    };
    // The language of the biggest service of the case's fleet.
    let lang = |index: u32| {
        let spec = shape.fleet(40 + u64::from(index)).unwrap();
        let biggest =
            spec.services.iter().max_by_key(|s| spec.instances.iter().filter(|i| i.service == s.name).count());
        biggest.unwrap().traits["lang"].clone()
    };
    let cases = vec![
        case(0, Kind::Healthy, Default::default()),
        case(1, Kind::Defect(Effect::Crash), traits("lang", &lang(1))),
        case(2, Kind::Defect(Effect::Errors(0.2)), traits("lang", &lang(2))),
    ];
    let trials = run_corpus(cases, setup, 2, false).unwrap_or_else(|e| panic!("{e:#}"));
    for t in &trials {
        eprintln!("{}", serde_json::to_string(t).unwrap());
    }
    assert_eq!(trials.len(), 3);
    assert_eq!(trials[0].end, End::Completed, "{:?}", trials[0]);
    assert!(trials[0].batches.len() >= 2 && trials[0].batches.iter().all(|b| !b.affected));
    for t in &trials[1..] {
        assert_eq!(t.end, End::Detected, "{t:?}");
        assert!(t.delay_bakes.is_some() && t.blast_radius > 0, "{t:?}");
    }

    let f = figures(&trials, &setup, 7);
    let json = serde_json::to_value(&f).unwrap();
    assert_eq!(json["plans"], 3);
    let rows = json["effects"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the corpus's own magnitudes of the list have rows: {rows:?}");
    assert_eq!(rows[0]["effect"], "crash");
    assert_eq!(rows[0]["recall"], 1.0);
    for key in ["delay_bakes_median", "delay_bakes_max", "blast_radius_percent_median", "blast_radius_percent_max"] {
        assert!(rows[0][key].is_number(), "{key} in {}", rows[0]);
    }
    let healthy = &json["healthy"];
    assert_eq!(healthy["plans"], 1);
    assert!(healthy["batches"].as_u64().unwrap() >= 2, "{healthy}");
    assert!(healthy["false_block_rate"].is_number() && healthy["inconclusive_rate"].is_number());
}
