"""The Caffe messages cnngraph reads, declared with protobuf's own descriptors (no protoc, no
hand-written parser): a `FileDescriptorProto` built from the table below, in a private pool, and
the message classes that `google.protobuf.message_factory` makes from it.

Names, field numbers, types, labels and defaults are facts from BVLC Caffe's published
`src/caffe/proto/caffe.proto` (package `caffe`, proto2). Only what the importer reads is
declared: the net, its layers, blobs, phase rules, and the parameter messages of the layer types
it converts (each of those complete, so that a misspelt field in them is caught rather than
skipped). Everything else a prototxt or caffemodel holds (other layers' parameters, solver and
loss settings, fields added by Caffe's forks) is skipped by the readers in `importers.caffe`.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "caffe"
_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}
_ENGINE = {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}

# Enums at the top level of caffe.proto.
ENUMS = {"Phase": {"TRAIN": 0, "TEST": 1}}

# message -> (fields, nested enums). A field: (name, number, type, label, default); label "r" is
# repeated, "rp" repeated and packed, "" optional. A type is a scalar above, a message of this
# table, or an enum ("Phase", or a nested enum by its bare name).
MESSAGES: dict[str, tuple[list[tuple], dict[str, dict[str, int]]]] = {
    "BlobShape": ([("dim", 1, "int64", "rp", None)], {}),
    "BlobProto": ([
        ("shape", 7, "BlobShape", "", None),
        ("data", 5, "float", "rp", None),
        ("diff", 6, "float", "rp", None),
        ("double_data", 8, "double", "rp", None),
        ("double_diff", 9, "double", "rp", None),
        ("num", 1, "int32", "", 0),  # the deprecated 4-D shape
        ("channels", 2, "int32", "", 0),
        ("height", 3, "int32", "", 0),
        ("width", 4, "int32", "", 0),
    ], {}),
    "NetParameter": ([
        ("name", 1, "string", "", None),
        ("input", 3, "string", "r", None),  # deprecated net-level inputs
        ("input_shape", 8, "BlobShape", "r", None),
        ("input_dim", 4, "int32", "r", None),
        ("force_backward", 5, "bool", "", False),
        ("state", 6, "NetState", "", None),
        ("debug_info", 7, "bool", "", False),
        ("layer", 100, "LayerParameter", "r", None),
        ("layers", 2, "V1LayerParameter", "r", None),  # the V1 format: detected, not read
    ], {}),
    "NetState": ([
        ("phase", 1, "Phase", "", "TEST"),
        ("level", 2, "int32", "", 0),
        ("stage", 3, "string", "r", None),
    ], {}),
    "NetStateRule": ([
        ("phase", 1, "Phase", "", None),
        ("min_level", 2, "int32", "", None),
        ("max_level", 3, "int32", "", None),
        ("stage", 4, "string", "r", None),
        ("not_stage", 5, "string", "r", None),
    ], {}),
    "ParamSpec": ([
        ("name", 1, "string", "", None),
        ("share_mode", 2, "DimCheckMode", "", None),
        ("lr_mult", 3, "float", "", 1.0),
        ("decay_mult", 4, "float", "", 1.0),
    ], {"DimCheckMode": {"STRICT": 0, "PERMISSIVE": 1}}),
    "FillerParameter": ([
        ("type", 1, "string", "", "constant"),
        ("value", 2, "float", "", 0.0),
        ("min", 3, "float", "", 0.0),
        ("max", 4, "float", "", 1.0),
        ("mean", 5, "float", "", 0.0),
        ("std", 6, "float", "", 1.0),
        ("sparse", 7, "int32", "", -1),
        ("variance_norm", 8, "VarianceNorm", "", "FAN_IN"),
    ], {"VarianceNorm": {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2}}),
    "V1LayerParameter": ([("name", 4, "string", "", None)], {}),
    "LayerParameter": ([
        ("name", 1, "string", "", None),
        ("type", 2, "string", "", None),
        ("bottom", 3, "string", "r", None),
        ("top", 4, "string", "r", None),
        ("phase", 10, "Phase", "", None),
        ("loss_weight", 5, "float", "r", None),
        ("param", 6, "ParamSpec", "r", None),
        ("blobs", 7, "BlobProto", "r", None),
        ("propagate_down", 11, "bool", "r", None),
        ("include", 8, "NetStateRule", "r", None),
        ("exclude", 9, "NetStateRule", "r", None),
        ("transform_param", 100, "TransformationParameter", "", None),
        ("batch_norm_param", 139, "BatchNormParameter", "", None),
        ("concat_param", 104, "ConcatParameter", "", None),
        ("convolution_param", 106, "ConvolutionParameter", "", None),
        ("dropout_param", 108, "DropoutParameter", "", None),
        ("eltwise_param", 110, "EltwiseParameter", "", None),
        ("flatten_param", 135, "FlattenParameter", "", None),
        ("inner_product_param", 117, "InnerProductParameter", "", None),
        ("input_param", 143, "InputParameter", "", None),
        ("lrn_param", 118, "LRNParameter", "", None),
        ("pooling_param", 121, "PoolingParameter", "", None),
        ("relu_param", 123, "ReLUParameter", "", None),
        ("scale_param", 142, "ScaleParameter", "", None),
        ("sigmoid_param", 124, "SigmoidParameter", "", None),
        ("softmax_param", 125, "SoftmaxParameter", "", None),
        ("tanh_param", 127, "TanHParameter", "", None),
    ], {}),
    "TransformationParameter": ([
        ("scale", 1, "float", "", 1.0),
        ("mirror", 2, "bool", "", False),
        ("crop_size", 3, "uint32", "", 0),
        ("mean_file", 4, "string", "", None),
        ("mean_value", 5, "float", "r", None),
        ("force_color", 6, "bool", "", False),
        ("force_gray", 7, "bool", "", False),
    ], {}),
    "BatchNormParameter": ([
        ("use_global_stats", 1, "bool", "", None),
        ("moving_average_fraction", 2, "float", "", 0.999),
        ("eps", 3, "float", "", 1e-5),
    ], {}),
    "ConcatParameter": ([
        ("axis", 2, "int32", "", 1),
        ("concat_dim", 1, "uint32", "", 1),
    ], {}),
    "ConvolutionParameter": ([
        ("num_output", 1, "uint32", "", None),
        ("bias_term", 2, "bool", "", True),
        ("pad", 3, "uint32", "r", None),
        ("kernel_size", 4, "uint32", "r", None),
        ("stride", 6, "uint32", "r", None),
        ("dilation", 18, "uint32", "r", None),
        ("pad_h", 9, "uint32", "", 0),
        ("pad_w", 10, "uint32", "", 0),
        ("kernel_h", 11, "uint32", "", None),
        ("kernel_w", 12, "uint32", "", None),
        ("stride_h", 13, "uint32", "", None),
        ("stride_w", 14, "uint32", "", None),
        ("group", 5, "uint32", "", 1),
        ("weight_filler", 7, "FillerParameter", "", None),
        ("bias_filler", 8, "FillerParameter", "", None),
        ("engine", 15, "Engine", "", "DEFAULT"),
        ("axis", 16, "int32", "", 1),
        ("force_nd_im2col", 17, "bool", "", False),
    ], {"Engine": _ENGINE}),
    "DropoutParameter": ([("dropout_ratio", 1, "float", "", 0.5)], {}),
    "EltwiseParameter": ([
        ("operation", 1, "EltwiseOp", "", "SUM"),
        ("coeff", 2, "float", "r", None),
        ("stable_prod_grad", 3, "bool", "", True),
    ], {"EltwiseOp": {"PROD": 0, "SUM": 1, "MAX": 2}}),
    "FlattenParameter": ([
        ("axis", 1, "int32", "", 1),
        ("end_axis", 2, "int32", "", -1),
    ], {}),
    "InnerProductParameter": ([
        ("num_output", 1, "uint32", "", None),
        ("bias_term", 2, "bool", "", True),
        ("weight_filler", 3, "FillerParameter", "", None),
        ("bias_filler", 4, "FillerParameter", "", None),
        ("axis", 5, "int32", "", 1),
        ("transpose", 6, "bool", "", False),
    ], {}),
    "InputParameter": ([("shape", 1, "BlobShape", "r", None)], {}),
    "LRNParameter": ([
        ("local_size", 1, "uint32", "", 5),
        ("alpha", 2, "float", "", 1.0),
        ("beta", 3, "float", "", 0.75),
        ("norm_region", 4, "NormRegion", "", "ACROSS_CHANNELS"),
        ("k", 5, "float", "", 1.0),
        ("engine", 6, "Engine", "", "DEFAULT"),
    ], {"NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}, "Engine": _ENGINE}),
    "PoolingParameter": ([
        ("pool", 1, "PoolMethod", "", "MAX"),
        ("pad", 4, "uint32", "", 0),
        ("pad_h", 9, "uint32", "", 0),
        ("pad_w", 10, "uint32", "", 0),
        ("kernel_size", 2, "uint32", "", None),
        ("kernel_h", 5, "uint32", "", None),
        ("kernel_w", 6, "uint32", "", None),
        ("stride", 3, "uint32", "", 1),
        ("stride_h", 7, "uint32", "", None),
        ("stride_w", 8, "uint32", "", None),
        ("engine", 11, "Engine", "", "DEFAULT"),
        ("global_pooling", 12, "bool", "", False),
        ("round_mode", 13, "RoundMode", "", "CEIL"),
    ], {"PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}, "Engine": _ENGINE,
        "RoundMode": {"CEIL": 0, "FLOOR": 1}}),
    "ReLUParameter": ([
        ("negative_slope", 1, "float", "", 0.0),
        ("engine", 2, "Engine", "", "DEFAULT"),
    ], {"Engine": _ENGINE}),
    "ScaleParameter": ([
        ("axis", 1, "int32", "", 1),
        ("num_axes", 2, "int32", "", 1),
        ("filler", 3, "FillerParameter", "", None),
        ("bias_term", 4, "bool", "", False),
        ("bias_filler", 5, "FillerParameter", "", None),
    ], {}),
    "SigmoidParameter": ([("engine", 1, "Engine", "", "DEFAULT")], {"Engine": _ENGINE}),
    "SoftmaxParameter": ([
        ("engine", 1, "Engine", "", "DEFAULT"),
        ("axis", 2, "int32", "", 1),
    ], {"Engine": _ENGINE}),
    "TanHParameter": ([("engine", 1, "Engine", "", "DEFAULT")], {"Engine": _ENGINE}),
}

# Messages declared complete: a field the file gives that is not declared here is an error (a
# misspelling, or a fork's extension whose meaning cnngraph does not know), not skipped.
COMPLETE = {name for name in MESSAGES if name not in
            ("NetParameter", "LayerParameter", "V1LayerParameter", "TransformationParameter")}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="cnngraph_caffe.proto", package=PACKAGE,
                                               syntax="proto2")
    for name, values in ENUMS.items():
        _enum(proto.enum_type.add(), name, values)
    for name, (fields, enums) in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for enum_name, values in enums.items():
            _enum(message.enum_type.add(), enum_name, values)
        for field_name, number, kind, label, default in fields:
            _field(message.field.add(), name, enums, field_name, number, kind, label, default)
    return proto


def _enum(proto, name: str, values: dict[str, int]) -> None:
    proto.name = name
    for value_name, number in values.items():
        proto.value.add(name=value_name, number=number)


def _field(proto, message: str, enums: dict, name: str, number: int, kind: str, label: str,
           default) -> None:
    F = descriptor_pb2.FieldDescriptorProto
    proto.name, proto.number = name, number
    proto.label = F.LABEL_REPEATED if label.startswith("r") else F.LABEL_OPTIONAL
    if label == "rp":
        proto.options.packed = True
    if kind in _SCALARS:
        proto.type = _SCALARS[kind]
    elif kind in MESSAGES:
        proto.type, proto.type_name = F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
    else:
        scope = f"{message}." if kind in enums else ""
        proto.type, proto.type_name = F.TYPE_ENUM, f".{PACKAGE}.{scope}{kind}"
    if default is not None:
        proto.default_value = (str(default).lower() if isinstance(default, bool)
                               else repr(default) if isinstance(default, float) else str(default))


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message(name: str):
    """The generated class of Caffe message `name` (e.g. "NetParameter")."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


NetParameter = message("NetParameter")
LayerParameter = message("LayerParameter")
BlobProto = message("BlobProto")
