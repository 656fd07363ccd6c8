use super::*;

fn parser() -> PipeParser {
    PipeParser::new(
        [
            "Total_Accesses",
            "Total_kBytes",
            "BusyWorkers",
            "IdleWorkers",
            "CPULoad",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), i)),
    )
}

#[test]
fn lines_parse_as_ccad_reads_them() {
    let cases: &[(&[u8], Line)] = &[
        (
            b"Total_Accesses = 31",
            Line::Value {
                name: "Total_Accesses",
                value: 31.0,
            },
        ),
        (
            b"BusyWorkers: 6",
            Line::Value {
                name: "BusyWorkers",
                value: 6.0,
            },
        ),
        (
            b"  IdleWorkers :34\r",
            Line::Value {
                name: "IdleWorkers",
                value: 34.0,
            },
        ),
        (
            b"CPULoad: .0157",
            Line::Value {
                name: "CPULoad",
                value: 0.0157,
            },
        ),
        (
            b"x=-2.5e3",
            Line::Value {
                name: "x",
                value: -2500.0,
            },
        ),
        (
            b"Total Accesses: 31",
            Line::Value {
                name: "Total Accesses",
                value: 31.0,
            },
        ),
        (b".", Line::EndOfSet),
        (b" . ", Line::EndOfSet),
        (b"\x0c", Line::EndOfSet),
        (b"", Line::Ignored(Ignored::Blank)),
        (b"   ", Line::Ignored(Ignored::Blank)),
        (b"Scoreboard: ____KW__", Line::Ignored(Ignored::BadNumber)),
        (b"Time: 12:30", Line::Ignored(Ignored::BadNumber)),
        (b"x = nan", Line::Ignored(Ignored::BadNumber)),
        (b"x = inf", Line::Ignored(Ignored::BadNumber)),
        (b"x =", Line::Ignored(Ignored::BadNumber)),
        (b"= 5", Line::Ignored(Ignored::NotAValue)),
        (b"just words", Line::Ignored(Ignored::NotAValue)),
        (b"x = \xff", Line::Ignored(Ignored::NotText)),
    ];
    for (line, want) in cases {
        assert_eq!(
            &parse_line(line),
            want,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn the_seeds_echo_lines_make_one_set() {
    let mut p = parser();
    let mut sets = Vec::new();
    for line in [
        "Total_Accesses = 31\n",
        "Total_kBytes = 22241\n",
        "BusyWorkers = 6\n",
        "IdleWorkers = 34\n",
    ] {
        sets.extend(p.feed(line.as_bytes()));
    }
    assert!(sets.is_empty(), "no set before the dot");
    sets.extend(p.feed(b".\n"));
    assert_eq!(sets, [vec![(0, 31.0), (1, 22241.0), (2, 6.0), (3, 34.0)]]);
    assert_eq!(p.stats().sets, 1);
    assert_eq!(p.stats().values, 4);
}

#[test]
fn an_apache_status_page_feeds_the_declared_counters_and_the_rest_is_counted() {
    let page = "Total_Accesses: 31\nTotal_kBytes: 22241\nCPULoad: .0157\nUptime: 88\n\
                ReqPerSec: .352273\nBusyWorkers: 6\nIdleWorkers: 34\nScoreboard: ___KW___..\n";
    let mut p = parser();
    assert!(p.feed(page.as_bytes()).is_empty());
    let sets = p.feed(b".\n");
    assert_eq!(
        sets,
        [vec![
            (0, 31.0),
            (1, 22241.0),
            (4, 0.0157),
            (2, 6.0),
            (3, 34.0)
        ]]
    );
    let stats = p.stats();
    assert_eq!((stats.unknown, stats.malformed, stats.too_long), (2, 1, 0));
    assert_eq!(stats.lines, 9);
}

#[test]
fn a_form_feed_ends_the_set_wherever_it_stands() {
    let mut p = parser();
    assert_eq!(p.feed(b"BusyWorkers = 1\x0c"), [vec![(2, 1.0)]]);
    assert_eq!(p.feed(b"\x0c\n"), [vec![]]);
    assert_eq!(p.feed(b"BusyWorkers = 2\n\x0c\n"), [vec![(2, 2.0)]]);
    assert_eq!(p.stats().malformed, 0, "form feeds are no garbage");
}

#[test]
fn a_counter_given_twice_in_a_set_keeps_its_last_value() {
    let mut p = parser();
    assert_eq!(
        p.feed(b"BusyWorkers = 1\nIdleWorkers = 2\nBusyWorkers = 3\n.\n"),
        [vec![(2, 3.0), (3, 2.0)]]
    );
}

#[test]
fn any_chunking_gives_the_same_sets() {
    let input: &[u8] =
        b"Total_Accesses = 31\nnoise\nBusyWorkers: 6\n.\nIdleWorkers=1\x0cTotal_kBytes = 9\n.\n";
    let whole = parser().feed(input);
    for size in 1..input.len() {
        let mut p = parser();
        let mut sets = Vec::new();
        for chunk in input.chunks(size) {
            sets.extend(p.feed(chunk));
        }
        assert_eq!(sets, whole, "chunks of {size}");
        assert_eq!(p.stats(), {
            let mut q = parser();
            q.feed(input);
            q.stats()
        });
    }
}

#[test]
fn an_endless_line_is_skipped_counted_and_bounded() {
    let mut p = parser();
    let garbage = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        assert!(p.feed(&garbage).is_empty());
        assert!(p.line.len() <= MAX_LINE, "the partial line stays bounded");
    }
    // The rest of the endless line, then good lines again.
    assert_eq!(p.feed(b"yyy\nBusyWorkers = 5\n.\n"), [vec![(2, 5.0)]]);
    assert_eq!(p.stats().too_long, 1);
    // A line of exactly the limit is still a line.
    let mut line = b"BusyWorkers = 7".to_vec();
    line.resize(MAX_LINE, b' ');
    line.push(b'\n');
    p.feed(&line);
    assert_eq!(p.feed(b".\n"), [vec![(2, 7.0)]]);
}

#[test]
fn binary_garbage_is_counted_and_reading_goes_on() {
    let mut p = parser();
    let garbage: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    p.feed(&garbage);
    p.feed(b"\n");
    assert_eq!(p.feed(b"IdleWorkers = 4\n.\n"), [vec![(3, 4.0)]]);
    assert!(p.stats().malformed > 0);
    assert!(p.take_last_ignored().is_some());
}

#[test]
fn a_regular_file_at_the_pipe_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cca");
    std::fs::write(&path, "x").expect("write");
    let e = create_fifo(&path).expect_err("a regular file is no pipe");
    assert_eq!(
        e.to_string(),
        format!(
            "{} exists and is a regular file, not a named pipe",
            path.display()
        )
    );
    let e = create_fifo(dir.path()).expect_err("a directory is no pipe");
    assert!(e.to_string().ends_with("exists and is not a named pipe"));
}

#[test]
fn the_fifo_is_created_once_and_an_existing_one_is_taken() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cca");
    create_fifo(&path).expect("created");
    let meta = std::fs::symlink_metadata(&path).expect("exists");
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o777, FIFO_MODE);
    create_fifo(&path).expect("an existing FIFO is fine");
}

#[tokio::test]
async fn the_reader_survives_feeders_that_come_and_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cca");
    create_fifo(&path).expect("created");
    let receiver = open(&path).expect("opened");
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(run(7, path.clone(), receiver, parser(), tx));
    for round in 0..3u32 {
        // Each write opens and closes the pipe, as `echo ... > pipe` does.
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::write(&p, format!("BusyWorkers = {round}\n")).expect("write");
            std::fs::write(&p, ".\n").expect("write");
        })
        .await
        .expect("writer");
        let set = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a set in time")
            .expect("reader alive");
        assert_eq!(
            set,
            PipeSet {
                pipe: 7,
                values: vec![(2, f64::from(round))]
            }
        );
    }
    drop(rx);
    task.abort();
}
