//! The runtime-loaded driver off Apple hardware: it builds, says why it is unavailable,
//! and the engine over it reports that to placement, which then refuses `--backend ane`.

use ane::ffi::macos::MacDriver;
use ane::ffi::Driver;
use ane::{AneConfig, AneEngine};
use engine::matrix::cache::CacheBudget;
use engine::matrix::policy::{Backend, PlacementPolicy};
use engine::matrix::{Availability, Dispatcher, MatrixEngine};
use std::sync::Arc;

#[test]
fn unavailable_off_macos_with_the_reason() {
    let d = MacDriver::new();
    let why = match d.availability() {
        Ok(()) if cfg!(target_os = "macos") => return, // a Mac with the framework: nothing to check here
        Ok(()) => panic!("the ANE cannot be available on this OS"),
        Err(why) => why,
    };
    assert!(why.contains("AppleNeuralEngine.framework not found"), "{why}");
    // Every entry point fails cleanly instead of touching a null pointer.
    assert!(d.compile("program(1.3)", &[], 1).err().unwrap().0.contains("ANE unavailable"));
    assert!(d.surface(65536).is_err());

    let e: Arc<dyn MatrixEngine> = Arc::new(AneEngine::new(MacDriver::new(), AneConfig::default()));
    assert_eq!(e.name(), "ane");
    assert!(matches!(e.availability(), Availability::Unavailable(ref w) if w.contains("AppleNeuralEngine")));
    let policy = PlacementPolicy::new(Backend::Named("ane".into()), 64, None, (1e11, 1e10));
    let err = Dispatcher::new(vec![e.clone()], policy, CacheBudget::default(), false).err().unwrap();
    assert!(err.to_string().contains("backend 'ane' is unavailable: AppleNeuralEngine.framework not found"), "{err}");
    // Under auto it is simply skipped, with the reason.
    let auto = PlacementPolicy::new(Backend::Auto, 1, None, (1.0, 1.0));
    let d = auto.decide(&[e.as_ref()], &engine::matrix::MatmulShape { m: 576, k: 576, n: 512, ty: gguf::GgmlType::Q4_1 });
    assert!(d.engine.is_none() && d.reason.contains("ane unavailable"), "{}", d.reason);
}
