//! Every file of the committed corpus of broken GGUF files fails with the error it names.

use std::path::Path;

#[test]
fn corpus_files_fail_with_clear_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let expected = std::fs::read_to_string(dir.join("EXPECTED")).unwrap();
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (file, want) = line.split_once(": ").unwrap();
        let result = gguf::GgufFile::open(dir.join(file));
        match (want, result) {
            ("OK", Ok(_)) => {}
            ("OK", Err(e)) => panic!("{file} should parse: {e}"),
            (_, Ok(_)) => panic!("{file} parsed but should fail with '{want}'"),
            (_, Err(e)) => assert!(e.to_string().contains(want), "{file}: error '{e}' does not mention '{want}'"),
        }
        checked += 1;
    }
    let files = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "gguf")).count();
    assert_eq!(checked, files, "every corpus file is listed in EXPECTED");
}

#[test]
fn fuzz_artifacts_never_panic() {
    // Crashes found by `cargo fuzz run gguf_parse` are copied here and must stay fixed.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let _ = gguf::parse(&bytes);
    }
}
