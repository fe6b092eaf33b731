#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    starling_vmm::fuzzing::virtio_net(data);
});
