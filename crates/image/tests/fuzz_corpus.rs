//! Replays the committed OCI fuzz corpus through the fuzz entry point (see fuzz/README.md).

#[test]
fn oci_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/oci");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        starling_image::fuzzing::oci(&data);
        for cut in [0, 1, data.len() / 2] {
            starling_image::fuzzing::oci(&data[..cut]);
        }
        n += 1;
    }
    assert!(n > 0);
}
