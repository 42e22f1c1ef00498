//! The private AppleNeuralEngine framework, opened at run time (written blind: nobody
//! here has a Mac). Nothing is cfg-gated: the frameworks are `dlopen`ed through
//! `libloading`, classes and selectors are looked up by name, and `objc_msgSend` is cast
//! to each selector's exact non-variadic signature (§1: a variadic call misplaces
//! arguments on arm64). So this compiles and type-checks on Linux, where
//! [`MacDriver::availability`] says which framework is missing.
//!
//! Every message send below names the §1/§2 fact it relies on.

use super::{Driver, DriverError, WeightFile};
use libloading::Library;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Id = *mut c_void;
type Sel = *mut c_void;
/// ObjC BOOL: `signed char` on x86_64, `bool` on arm64; one byte either way.
type Bool = i8;

const ANE: &str = "/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine";
const IOSURFACE: &str = "/System/Library/Frameworks/IOSurface.framework/IOSurface";
const FOUNDATION: &str = "/System/Library/Frameworks/Foundation.framework/Foundation";
const COREFOUNDATION: &str = "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation";
const OBJC: &str = "/usr/lib/libobjc.A.dylib";
/// QoS everyone passes (§1: the "Default" queue).
const QOS: u32 = 21;
/// NSNotFound (NSIntegerMax).
const NS_NOT_FOUND: usize = isize::MAX as usize;

/// Selectors, registered once. Class methods are checked with `class_getClassMethod`, instance methods with `class_getInstanceMethod`.
struct Sels {
    model_with_mil: Sel,
    in_memory_model: Sel,
    hex_id: Sel,
    compile: Sel,
    load: Sel,
    unload: Sel,
    evaluate: Sel,
    request: Sel,
    object_with_surface: Sel,
    inner_model: Sel,
    input_symbols: Sel,
    output_symbols: Sel,
    first_index: Sel,
    index_greater: Sel,
    data_with_bytes: Sel,
    string_with_utf8: Sel,
    utf8_string: Sel,
    description: Sel,
    number_u64: Sel,
    dict_with: Sel,
    array_with: Sel,
    retain: Sel,
    release: Sel,
    file_url: Sel,
    /// Optional (§1, OM's persistent cache): `-setModelURL:` and `-compiledModelExists`.
    /// Without them `compile_cached` compiles every time.
    set_model_url: Option<Sel>,
    compiled_exists: Option<Sel>,
}

struct Classes {
    desc: Id,
    in_mem: Id,
    request: Id,
    io_object: Id,
    ns_data: Id,
    ns_string: Id,
    ns_number: Id,
    ns_dictionary: Id,
    ns_array: Id,
    ns_url: Id,
}

/// Everything looked up at start-up.
struct Api {
    msg_send: unsafe extern "C" fn(),
    pool_push: unsafe extern "C" fn() -> *mut c_void,
    pool_pop: unsafe extern "C" fn(*mut c_void),
    cf_release: unsafe extern "C" fn(*const c_void),
    io_create: unsafe extern "C" fn(Id) -> *mut c_void,
    io_lock: unsafe extern "C" fn(*mut c_void, u32, *mut u32) -> i32,
    io_unlock: unsafe extern "C" fn(*mut c_void, u32, *mut u32) -> i32,
    io_base: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    io_alloc_size: unsafe extern "C" fn(*mut c_void) -> usize,
    temp_dir: unsafe extern "C" fn() -> Id,
    /// kIOSurfaceWidth, Height, BytesPerElement, BytesPerRow, AllocSize, PixelFormat (CFStringRefs).
    io_keys: [Id; 6],
    sel: Sels,
    cls: Classes,
    _libs: Vec<Library>,
}

// SAFETY: function pointers and immutable class/selector handles, valid process-wide.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// `objc_msgSend` cast to `fn(receiver, selector, args...) -> ret` (exact, non-variadic).
macro_rules! send {
    ($api:expr, $recv:expr, $sel:ident => $ret:ty $(, $t:ty = $a:expr)*) => {{
        let f: unsafe extern "C" fn(Id, Sel $(, $t)*) -> $ret = std::mem::transmute($api.msg_send);
        f($recv, $api.sel.$sel $(, $a)*)
    }};
}

fn open(path: &str, what: &str) -> Result<Library, String> {
    // SAFETY: system frameworks; their initialisers are what every ObjC program runs.
    unsafe { Library::new(path) }.map_err(|e| format!("{what} not found ({e})"))
}

unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
    lib.get::<T>(name.as_bytes()).map(|s| *s).map_err(|e| format!("symbol {name} missing ({e})"))
}

impl Api {
    unsafe fn load() -> Result<Api, String> {
        // The private framework first: its absence is the common, expected reason.
        let ane = open(ANE, "AppleNeuralEngine.framework")?;
        let objc = open(OBJC, "libobjc")?;
        let foundation = open(FOUNDATION, "Foundation.framework")?;
        let cf = open(COREFOUNDATION, "CoreFoundation.framework")?;
        let ios = open(IOSURFACE, "IOSurface.framework")?;
        let get_class: unsafe extern "C" fn(*const c_char) -> Id = sym(&objc, "objc_getClass")?;
        let sel_reg: unsafe extern "C" fn(*const c_char) -> Sel = sym(&objc, "sel_registerName")?;
        let class_method: unsafe extern "C" fn(Id, Sel) -> *mut c_void = sym(&objc, "class_getClassMethod")?;
        let inst_method: unsafe extern "C" fn(Id, Sel) -> *mut c_void = sym(&objc, "class_getInstanceMethod")?;
        let class = |n: &str| -> Result<Id, String> {
            let c = CString::new(n).expect("no NUL");
            let id = get_class(c.as_ptr());
            if id.is_null() { Err(format!("class {n} not found")) } else { Ok(id) }
        };
        let sel = |n: &str| sel_reg(CString::new(n).expect("no NUL").as_ptr());
        // Check a selector exists on its class (class or instance side).
        let check = |cls: Id, cname: &str, s: &str, instance: bool| -> Result<Sel, String> {
            let sl = sel(s);
            let m = if instance { inst_method(cls, sl) } else { class_method(cls, sl) };
            if m.is_null() { Err(format!("{cname} lacks {}{s}", if instance { "-" } else { "+" })) } else { Ok(sl) }
        };
        // §1: the four private classes of the in-memory path.
        let cls = Classes {
            desc: class("_ANEInMemoryModelDescriptor")?,
            in_mem: class("_ANEInMemoryModel")?,
            request: class("_ANERequest")?,
            io_object: class("_ANEIOSurfaceObject")?,
            ns_data: class("NSData")?,
            ns_string: class("NSString")?,
            ns_number: class("NSNumber")?,
            ns_dictionary: class("NSDictionary")?,
            ns_array: class("NSArray")?,
            ns_url: class("NSURL")?,
        };
        // §1 banks: the inner model answers the symbol-index questions.
        let ane_model = class("_ANEModel")?;
        let ns_index_set = class("NSIndexSet")?;
        let ns_object = class("NSObject")?;
        let sel = Sels {
            model_with_mil: check(cls.desc, "_ANEInMemoryModelDescriptor", "modelWithMILText:weights:optionsPlist:", false)?,
            in_memory_model: check(cls.in_mem, "_ANEInMemoryModel", "inMemoryModelWithDescriptor:", false)?,
            hex_id: check(cls.in_mem, "_ANEInMemoryModel", "hexStringIdentifier", true)?,
            compile: check(cls.in_mem, "_ANEInMemoryModel", "compileWithQoS:options:error:", true)?,
            load: check(cls.in_mem, "_ANEInMemoryModel", "loadWithQoS:options:error:", true)?,
            unload: check(cls.in_mem, "_ANEInMemoryModel", "unloadWithQoS:error:", true)?,
            evaluate: check(cls.in_mem, "_ANEInMemoryModel", "evaluateWithQoS:options:request:error:", true)?,
            inner_model: check(cls.in_mem, "_ANEInMemoryModel", "model", true)?,
            request: check(cls.request, "_ANERequest", "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:", false)?,
            object_with_surface: check(cls.io_object, "_ANEIOSurfaceObject", "objectWithIOSurface:", false)?,
            input_symbols: check(ane_model, "_ANEModel", "inputSymbolIndicesForProcedureIndex:", true)?,
            output_symbols: check(ane_model, "_ANEModel", "outputSymbolIndicesForProcedureIndex:", true)?,
            first_index: check(ns_index_set, "NSIndexSet", "firstIndex", true)?,
            index_greater: check(ns_index_set, "NSIndexSet", "indexGreaterThanIndex:", true)?,
            data_with_bytes: check(cls.ns_data, "NSData", "dataWithBytes:length:", false)?,
            string_with_utf8: check(cls.ns_string, "NSString", "stringWithUTF8String:", false)?,
            utf8_string: check(cls.ns_string, "NSString", "UTF8String", true)?,
            description: check(ns_object, "NSObject", "description", true)?,
            number_u64: check(cls.ns_number, "NSNumber", "numberWithUnsignedLongLong:", false)?,
            dict_with: check(cls.ns_dictionary, "NSDictionary", "dictionaryWithObjects:forKeys:count:", false)?,
            array_with: check(cls.ns_array, "NSArray", "arrayWithObjects:count:", false)?,
            retain: check(ns_object, "NSObject", "retain", true)?,
            release: check(ns_object, "NSObject", "release", true)?,
            file_url: check(cls.ns_url, "NSURL", "fileURLWithPath:", false)?,
            set_model_url: check(cls.in_mem, "_ANEInMemoryModel", "setModelURL:", true).ok(),
            compiled_exists: check(cls.in_mem, "_ANEInMemoryModel", "compiledModelExists", true).ok(),
        };
        let key = |n: &str| -> Result<Id, String> { Ok(*sym::<*const Id>(&ios, n)?) };
        Ok(Api {
            msg_send: sym(&objc, "objc_msgSend")?,
            pool_push: sym(&objc, "objc_autoreleasePoolPush")?,
            pool_pop: sym(&objc, "objc_autoreleasePoolPop")?,
            cf_release: sym(&cf, "CFRelease")?,
            io_create: sym(&ios, "IOSurfaceCreate")?,
            io_lock: sym(&ios, "IOSurfaceLock")?,
            io_unlock: sym(&ios, "IOSurfaceUnlock")?,
            io_base: sym(&ios, "IOSurfaceGetBaseAddress")?,
            io_alloc_size: sym(&ios, "IOSurfaceGetAllocSize")?,
            temp_dir: sym(&foundation, "NSTemporaryDirectory")?,
            io_keys: [
                key("kIOSurfaceWidth")?,
                key("kIOSurfaceHeight")?,
                key("kIOSurfaceBytesPerElement")?,
                key("kIOSurfaceBytesPerRow")?,
                key("kIOSurfaceAllocSize")?,
                key("kIOSurfacePixelFormat")?,
            ],
            sel,
            cls,
            _libs: vec![ane, objc, foundation, cf, ios],
        })
    }

    unsafe fn string(&self, s: &str) -> Id {
        let c = CString::new(s).expect("no NUL");
        send!(self, self.cls.ns_string, string_with_utf8 => Id, *const c_char = c.as_ptr())
    }
    unsafe fn to_rust(&self, s: Id) -> String {
        if s.is_null() {
            return "(nil)".into();
        }
        let p = send!(self, s, utf8_string => *const c_char);
        if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
    }
    unsafe fn error_text(&self, what: &str, err: Id) -> DriverError {
        let d = if err.is_null() { "no NSError".to_string() } else { self.to_rust(send!(self, err, description => Id)) };
        DriverError(format!("{what} failed: {d}"))
    }
    unsafe fn number(&self, v: u64) -> Id {
        send!(self, self.cls.ns_number, number_u64 => Id, u64 = v)
    }
    unsafe fn data(&self, b: &[u8]) -> Id {
        send!(self, self.cls.ns_data, data_with_bytes => Id, *const c_void = b.as_ptr().cast(), usize = b.len())
    }
    unsafe fn dict(&self, keys: &[Id], values: &[Id]) -> Id {
        send!(self, self.cls.ns_dictionary, dict_with => Id, *const Id = values.as_ptr(), *const Id = keys.as_ptr(), usize = keys.len())
    }
    unsafe fn array(&self, items: &[Id]) -> Id {
        send!(self, self.cls.ns_array, array_with => Id, *const Id = items.as_ptr(), usize = items.len())
    }
    unsafe fn index_set(&self, set: Id) -> Vec<usize> {
        let mut v = Vec::new();
        if set.is_null() {
            return v;
        }
        let mut i = send!(self, set, first_index => usize);
        while i != NS_NOT_FOUND {
            v.push(i);
            i = send!(self, set, index_greater => usize, usize = i);
        }
        v
    }
}

/// Autorelease pool for the duration of a call (GA, §1).
struct Pool<'a>(&'a Api, *mut c_void);
impl<'a> Pool<'a> {
    unsafe fn new(api: &'a Api) -> Self {
        Pool(api, (api.pool_push)())
    }
}
impl Drop for Pool<'_> {
    fn drop(&mut self) {
        // SAFETY: pops the pool pushed in `new`, on the same thread.
        unsafe { (self.0.pool_pop)(self.1) }
    }
}

/// A compiled `_ANEInMemoryModel` (retained) and its temporary directory.
pub struct MacProgram {
    model: Id,
    dir: PathBuf,
    procedures: usize,
    /// Staged in a persistent directory (kept on unload); the compile was skipped because
    /// the runtime had the compiled model, so a failed load recompiles once (§1, OM).
    persistent: bool,
    skipped_compile: std::sync::atomic::AtomicBool,
}
// SAFETY: the engine serialises every call on one program (§1: evals serialised per program).
unsafe impl Send for MacProgram {}
unsafe impl Sync for MacProgram {}

/// An IOSurface (§2: flat, Width = BytesPerRow = AllocSize = bytes, Height 1, BytesPerElement 1, PixelFormat 0).
pub struct MacSurface {
    api: Arc<Api>,
    surface: *mut c_void,
    bytes: usize,
}
// SAFETY: IOSurfaces are shareable kernel objects; CPU access goes through lock/unlock.
unsafe impl Send for MacSurface {}

impl Drop for MacSurface {
    fn drop(&mut self) {
        // SAFETY: we own the reference IOSurfaceCreate returned.
        unsafe { (self.api.cf_release)(self.surface) }
    }
}

/// The ANE through the private framework.
pub struct MacDriver {
    api: Result<Arc<Api>, String>,
}

impl Default for MacDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl MacDriver {
    /// Open the frameworks; never fails — [`Driver::availability`] reports why not.
    pub fn new() -> Self {
        // SAFETY: only dlopen/dlsym and lookups by name; nothing is called yet.
        MacDriver { api: unsafe { Api::load() }.map(Arc::new) }
    }

    fn api(&self) -> Result<&Arc<Api>, DriverError> {
        self.api.as_ref().map_err(|e| DriverError(format!("ANE unavailable: {e}")))
    }
}

/// The OS build (ProductBuildVersion): a compiled model is only reused by the same build (§1, OM).
fn os_build() -> String {
    let plist = std::fs::read_to_string("/System/Library/CoreServices/SystemVersion.plist").unwrap_or_default();
    plist
        .split_once("<key>ProductBuildVersion</key>")
        .and_then(|(_, rest)| rest.split_once("<string>"))
        .and_then(|(_, rest)| rest.split_once("</string>"))
        .map(|(v, _)| v.trim().chars().filter(|c| c.is_ascii_alphanumeric()).collect())
        .filter(|v: &String| !v.is_empty())
        .unwrap_or_else(|| "unknown-build".into())
}

impl MacDriver {
    /// §1 steps 1–4. With `persist`, the model URL is set to `persist/<OS build>-<hexId>`
    /// (OM): if the runtime already holds a compiled model there the compile is skipped,
    /// and the directory is kept on unload so the next process finds it.
    fn compile_in(&self, mil: &str, weights: &[WeightFile], procedures: usize, persist: Option<&Path>) -> Result<MacProgram, DriverError> {
        let api = self.api()?;
        unsafe {
            let _pool = Pool::new(api);
            // §1 step 1: MIL as NSData (OR #9); weights {path: {"offset": 0, "data": NSData}};
            // an empty dictionary, never nil (OR #11); options nil.
            let (ko, kd) = (api.string("offset"), api.string("data"));
            let mut paths = Vec::new();
            let mut entries = Vec::new();
            for w in weights {
                paths.push(api.string(w.path));
                entries.push(api.dict(&[ko, kd], &[api.number(0), api.data(w.bytes)]));
            }
            let wdict = api.dict(&paths, &entries);
            let desc = send!(api, api.cls.desc, model_with_mil => Id, Id = api.data(mil.as_bytes()), Id = wdict, Id = std::ptr::null_mut());
            if desc.is_null() {
                return Err(DriverError("modelWithMILText:weights:optionsPlist: returned nil (MIL rejected)".into()));
            }
            // §1 step 2.
            let model = send!(api, api.cls.in_mem, in_memory_model => Id, Id = desc);
            if model.is_null() {
                return Err(DriverError("inMemoryModelWithDescriptor: returned nil".into()));
            }
            // §1 step 3: @model_path maps to NSTemporaryDirectory()/hexStringIdentifier; stage files there
            // (or, persistent, in the stable directory the model URL names).
            let hex = api.to_rust(send!(api, model, hex_id => Id));
            if hex.is_empty() || hex.contains(['/', '.']) {
                return Err(DriverError(format!("hexStringIdentifier {hex:?} is not a directory name")));
            }
            let dir = match persist {
                Some(root) => root.join(format!("{}-{hex}", os_build())),
                None => PathBuf::from(api.to_rust((api.temp_dir)())).join(&hex),
            };
            let mut skipped_compile = false;
            // §1 (OM): point the model at a stable directory; `compiledModelExists` then says
            // whether the runtime's content-addressed cache (keyed by the hexId: MIL, weights,
            // options) already holds it. UNVERIFIED here: written from OM's description.
            if let (Some(set_url), Some(exists)) = (api.sel.set_model_url.filter(|_| persist.is_some()), api.sel.compiled_exists) {
                std::fs::create_dir_all(&dir).map_err(|e| DriverError(format!("creating {}: {e}", dir.display())))?;
                let f: unsafe extern "C" fn(Id, Sel, Id) = std::mem::transmute(api.msg_send);
                let path = api.string(&dir.to_string_lossy());
                f(model, set_url, send!(api, api.cls.ns_url, file_url => Id, Id = path));
                let g: unsafe extern "C" fn(Id, Sel) -> Bool = std::mem::transmute(api.msg_send);
                skipped_compile = g(model, exists) != 0;
            }
            // Staged files are kept beside a cached compile (a failed load recompiles from them).
            if !skipped_compile || !dir.join("model.mil").exists() {
                let stage = || -> std::io::Result<()> {
                    std::fs::create_dir_all(dir.join("weights"))?;
                    std::fs::write(dir.join("model.mil"), mil)?;
                    for w in weights {
                        std::fs::write(dir.join(w.path.trim_start_matches("@model_path/")), w.bytes)?;
                    }
                    Ok(())
                };
                stage().map_err(|e| DriverError(format!("staging {}: {e}", dir.display())))?;
            }
            if !skipped_compile {
                // §1 step 4: compileWithQoS:options:error: (uint QoS, empty dictionary, NSError**) → BOOL.
                Self::compile_model(api, model).inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&dir);
                })?;
            }
            send!(api, model, retain => Id);
            Ok(MacProgram { model, dir, procedures, persistent: persist.is_some(), skipped_compile: skipped_compile.into() })
        }
    }

    unsafe fn compile_model(api: &Api, model: Id) -> Result<(), DriverError> {
        let mut err: Id = std::ptr::null_mut();
        let ok = send!(api, model, compile => Bool, u32 = QOS, Id = api.dict(&[], &[]), *mut Id = &mut err);
        if ok == 0 {
            return Err(api.error_text("ANE compile", err));
        }
        Ok(())
    }
}

impl Driver for MacDriver {
    type Program = MacProgram;
    type Surface = MacSurface;

    fn name(&self) -> &str {
        "ane"
    }
    fn availability(&self) -> Result<(), String> {
        self.api.as_ref().map(|_| ()).map_err(Clone::clone)
    }
    fn throughput_hint(&self) -> (f64, f64) {
        // §5: 2–4 TFLOPS on single convs at N ≥ 256; unified memory copies ~50 GB/s.
        (2.5e12, 5e10)
    }

    fn compile(&self, mil: &str, weights: &[WeightFile], procedures: usize) -> Result<MacProgram, DriverError> {
        self.compile_in(mil, weights, procedures, None)
    }

    fn compile_cached(&self, mil: &str, weights: &[WeightFile], procedures: usize, dir: &Path) -> Result<MacProgram, DriverError> {
        let api = self.api()?;
        if api.sel.set_model_url.is_none() || api.sel.compiled_exists.is_none() {
            return self.compile_in(mil, weights, procedures, None);
        }
        // A failure of the persistent path (an unverified API, §1 OM) must not cost the
        // program: fall back to the plain temporary-directory compile.
        self.compile_in(mil, weights, procedures, Some(dir)).or_else(|_| self.compile_in(mil, weights, procedures, None))
    }

    fn load(&self, p: &MacProgram) -> Result<(), DriverError> {
        let api = self.api()?;
        unsafe {
            let _pool = Pool::new(api);
            // §1 step 4, and §4: a failed load is retried once after 100 ms (GA). A program
            // whose compile was skipped (cached, §1 OM) is compiled before the retry instead.
            for attempt in 0..2 {
                let mut err: Id = std::ptr::null_mut();
                if send!(api, p.model, load => Bool, u32 = QOS, Id = api.dict(&[], &[]), *mut Id = &mut err) != 0 {
                    return Ok(());
                }
                if attempt == 1 {
                    return Err(api.error_text("ANE load (after one retry)", err));
                }
                if p.skipped_compile.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    Self::compile_model(api, p.model)?;
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            unreachable!()
        }
    }

    fn unload(&self, p: &MacProgram) {
        let Ok(api) = self.api() else { return };
        unsafe {
            let _pool = Pool::new(api);
            // §1 step 8: unloadWithQoS:error:, then drop our reference and the staged files.
            let mut err: Id = std::ptr::null_mut();
            send!(api, p.model, unload => Bool, u32 = QOS, *mut Id = &mut err);
            send!(api, p.model, release => ());
        }
        // A persistent directory holds the runtime's compiled model for the next process.
        if !p.persistent {
            let _ = std::fs::remove_dir_all(&p.dir);
        }
    }

    fn surface(&self, bytes: usize) -> Result<MacSurface, DriverError> {
        let api = self.api()?;
        unsafe {
            let _pool = Pool::new(api);
            let n = |v: u64| api.number(v);
            let b = bytes as u64;
            // §2: flat surface; NSDictionary is toll-free bridged to CFDictionaryRef.
            let props = api.dict(&api.io_keys, &[n(b), n(1), n(1), n(b), n(b), n(0)]);
            let s = (api.io_create)(props);
            if s.is_null() {
                return Err(DriverError(format!("IOSurfaceCreate of {bytes} bytes failed")));
            }
            Ok(MacSurface { api: api.clone(), surface: s, bytes })
        }
    }

    fn write(&self, s: &mut MacSurface, f: &mut dyn FnMut(&mut [u8])) -> Result<(), DriverError> {
        unsafe {
            // §2: lock for CPU access (never during an eval; the engine serialises).
            if (s.api.io_lock)(s.surface, 0, std::ptr::null_mut()) != 0 {
                return Err(DriverError("IOSurfaceLock failed".into()));
            }
            let len = (s.api.io_alloc_size)(s.surface).min(s.bytes);
            f(std::slice::from_raw_parts_mut((s.api.io_base)(s.surface).cast::<u8>(), len));
            (s.api.io_unlock)(s.surface, 0, std::ptr::null_mut());
        }
        Ok(())
    }

    fn read(&self, s: &MacSurface, f: &mut dyn FnMut(&[u8])) -> Result<(), DriverError> {
        const READ_ONLY: u32 = 1; // kIOSurfaceLockReadOnly
        unsafe {
            if (s.api.io_lock)(s.surface, READ_ONLY, std::ptr::null_mut()) != 0 {
                return Err(DriverError("IOSurfaceLock (read) failed".into()));
            }
            let len = (s.api.io_alloc_size)(s.surface).min(s.bytes);
            f(std::slice::from_raw_parts((s.api.io_base)(s.surface).cast::<u8>(), len));
            (s.api.io_unlock)(s.surface, READ_ONLY, std::ptr::null_mut());
        }
        Ok(())
    }

    fn evaluate(&self, p: &MacProgram, procedure: usize, inputs: &[&MacSurface], outputs: &[&MacSurface]) -> Result<(), DriverError> {
        let api = self.api()?;
        unsafe {
            let _pool = Pool::new(api);
            // §1 step 5: wrap each IOSurfaceRef.
            let wrap = |s: &&MacSurface| send!(api, api.cls.io_object, object_with_surface => Id, *mut c_void = s.surface);
            let ins: Vec<Id> = inputs.iter().map(wrap).collect();
            let outs: Vec<Id> = outputs.iter().map(wrap).collect();
            // Symbol indices: 0.. for a single `main` (GA); from the inner model for banks (OM).
            let (ii, oi) = if p.procedures == 1 {
                ((0..ins.len()).collect::<Vec<_>>(), (0..outs.len()).collect::<Vec<_>>())
            } else {
                let inner = send!(api, p.model, inner_model => Id);
                let i = api.index_set(send!(api, inner, input_symbols => Id, u32 = procedure as u32));
                let o = api.index_set(send!(api, inner, output_symbols => Id, u32 = procedure as u32));
                (i, o)
            };
            if ii.len() != ins.len() || oi.len() != outs.len() {
                return Err(DriverError(format!(
                    "procedure {procedure} has {} inputs and {} outputs, {} and {} surfaces given",
                    ii.len(), oi.len(), ins.len(), outs.len()
                )));
            }
            let nums = |v: &[usize]| api.array(&v.iter().map(|&x| api.number(x as u64)).collect::<Vec<_>>());
            // §1 step 6: NSArrays of objects and NSNumber indices, nil weightsBuffer and perfStats, NSNumber procedure.
            let req = send!(api, api.cls.request, request => Id,
                Id = api.array(&ins), Id = nums(&ii), Id = api.array(&outs), Id = nums(&oi),
                Id = std::ptr::null_mut(), Id = std::ptr::null_mut(), Id = api.number(procedure as u64));
            if req.is_null() {
                return Err(DriverError("requestWithInputs:… returned nil".into()));
            }
            // §1 step 7: synchronous evaluate → BOOL.
            let mut err: Id = std::ptr::null_mut();
            if send!(api, p.model, evaluate => Bool, u32 = QOS, Id = api.dict(&[], &[]), Id = req, *mut Id = &mut err) == 0 {
                return Err(api.error_text("ANE evaluate", err));
            }
        }
        Ok(())
    }
}
