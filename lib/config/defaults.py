"""The one config schema: every key, its meaning, unit and allowed values.

Every key of the original release (gyguo/PixelDistillation, lib/config/default.py) is here under the same
name and default, so its YAML files load unchanged (KD.TEMP and DKD.TEMP are floats here, 4.0 for the release's
int 4; an int is accepted wherever a float is expected; BASIC.TIME, the release's timestamp, is unused and "");
keys marked "new" are this project's.
Keys the original declared but never used are kept (so old files load) and say so.

A key added to this schema later must default to what the code did before it existed: an experiment saved before
the key lacks it in its config.yaml, and resuming it compares the command's value with the default
(lib.config.diff_cfg), so a default that changed what the code does would resume such an experiment with a
behaviour it did not start with. Every key added so far keeps this rule.
"""

from yacs.config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------------------------------------------
# Basic options: devices, workers, seeds, outputs
# ---------------------------------------------------------------------------------------------------------------
_C.BASIC = CN()
# Unused; the original stamped the start time here. Output directories carry no timestamps (they must chain).
_C.BASIC.TIME = ""
# CUDA device ids. [0] -> cuda:0; several ids spread the independent runs of an experiment over the GPUs
# (one run per GPU at a time). Under torchrun, a list of one id per process of a node (--nproc_per_node) gives
# each node's processes those GPUs, in order of LOCAL_RANK; a shorter list gives them GPUs 0, 1, ... Without CUDA
# the run falls back to the CPU after a one-line warning.
_C.BASIC.GPU_ID = [0]
# new. "auto": CUDA when available (GPU_ID picks the card), else CPU. "cpu": always the CPU. "cuda": CUDA or fail.
_C.BASIC.DEVICE = "auto"
# DataLoader worker processes (0 = load in the main process). Capped at the number of CPU cores.
_C.BASIC.NUM_WORKERS = 10
# Print a progress line every DISP_FREQ training steps (when stdout is not a terminal).
_C.BASIC.DISP_FREQ = 10
# Seed of the first run; run i of an experiment uses SEED + i. 0 .. 2**32 - NUM_RUNS (numpy's seeds are 32-bit).
_C.BASIC.SEED = 0
# Unused (the experiment directory is derived, see lib.engine.setup.experiment_dir); kept for old YAML files.
_C.BASIC.SAVE_DIR = ""
# Unused (paths are resolved against the repository root); kept for old YAML files.
_C.BASIC.ROOT_DIR = ""
# Unused (config.yaml and the git commit are recorded instead of copying code); kept for old YAML files.
_C.BASIC.BACKUP_CODES = True
# Unused, see BACKUP_CODES.
_C.BASIC.BACKUP_LIST = ["lib", "tools"]
# new. Root of all outputs: <OUTPUT_ROOT>/<dataset>/<experiment>/. Relative to the repository root or absolute.
_C.BASIC.OUTPUT_ROOT = "ckpt"
# new. Number of independent runs of a multi-run script (train_*_5runs.py). The teacher script always runs one.
_C.BASIC.NUM_RUNS = 5
# new. Independent runs trained at the same time, one process each. 0 (auto): one per GPU listed in GPU_ID
# on CUDA (GPU_ID [0,1,2,3,4] -> 5 runs at once), one at a time on the CPU. Under torchrun (DDP) runs are sequential.
_C.BASIC.PARALLEL_RUNS = 0
# new. True: move whatever an earlier attempt left in the experiment directory aside (to <dir>.old<k>) and start
# over.
# False: resume an interrupted experiment, or print the results of a finished one.
_C.BASIC.FRESH_START = False

# ---------------------------------------------------------------------------------------------------------------
# Model options
# ---------------------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# Unused: an informational tag of the original configs ("1runs", "5runs"); the number of runs comes from the script.
_C.MODEL.TYPE = ""
# Architecture of a single-network run (teacher / student baseline), see lib.models.model_builder.ARCHS.
# ViTs carry their input size: vit_{tiny,small,base}_patch16_<S>, e.g. vit_tiny_patch16_56.
_C.MODEL.ARCH = ""
# Start MODEL.ARCH from ImageNet weights (torchvision / timm weight APIs, or PRETRAIN_FILE).
_C.MODEL.PRETRAIN = False
# new. Local file with ImageNet weights for MODEL.ARCH (a torchvision / timm state dict); "" uses the weight APIs.
_C.MODEL.PRETRAIN_FILE = ""
# One-stage distillation method of tools_1_ts/train_kd_5runs.py: kd | at | sp | ickd | dkd. (ISRD's script distils
# logits with KD and refuses any other value here.)
_C.MODEL.KDTYPE = "kd"
# Teacher architecture (sees DATA.CROP_SIZE images).
_C.MODEL.ARCH_T = ""
# Teacher checkpoint (a model_best.pth written by the teacher script, or by the original release).
_C.MODEL.MODELDICT_T = ""
# Unused: the teacher's every weight comes from MODELDICT_T (required), so no ImageNet weights are fetched for it.
# Kept so the original YAML files load.
_C.MODEL.PRETRAIN_T = False
# Unused, see PRETRAIN_T (an earlier version of this project read it; kept so its saved configs load).
_C.MODEL.PRETRAIN_FILE_T = ""
# Assistant architecture (two-stage distillation).
_C.MODEL.ARCH_A = ""
# Assistant checkpoint (two-stage distillation).
_C.MODEL.MODELDICT_A = ""
# Initialise the assistant from ImageNet weights.
_C.MODEL.PRETRAIN_A = False
# Student architecture (sees DATA.CROP_SIZE / DATA.LESSEN_RATIO images).
_C.MODEL.ARCH_S = ""
# Student checkpoint the distillation scripts (tools_1_ts, tools_2_tas) start the student from ("" = none); the
# teacher and student baselines ignore it, with a warning.
_C.MODEL.MODELDICT_S = ""
# Initialise the student from ImageNet weights.
_C.MODEL.PRETRAIN_S = False
# new. Local ImageNet weight file for the student, see PRETRAIN_FILE.
_C.MODEL.PRETRAIN_FILE_S = ""
# Distil features before their last ReLU (feature methods AT, SP, ICKD; the release's KD script never passed it
# on, so its features were always after the ReLU, as with False). ISRD (and TAS's ISRD term) always decodes the
# pre-ReLU feature, as the release's ISRD script asked for it (the same conv1 output at FSR.POSITION 0).
_C.MODEL.PRERELU = False

# ---------------------------------------------------------------------------------------------------------------
# Distillation losses
# ---------------------------------------------------------------------------------------------------------------
_C.KD = CN()
# Softmax temperature T of logit KD (Hinton et al.); the KL term is scaled by T^2.
_C.KD.TEMP = 4.0
# Weight of the KD term; CE gets (1 - ALPHA).
_C.KD.ALPHA = 0.9

_C.AT = CN()
# Weight of attention transfer (Zagoruyko & Komodakis), summed over the four ResNet stages (a ViT's first four
# blocks against a CNN's four stages: the release zips the feature lists after the input module).
_C.AT.BETA = 1000.0

_C.SP = CN()
# Weight of similarity-preserving KD (Tung & Mori) on the last stage.
_C.SP.BETA = 3000.0

_C.ICKD = CN()
# Weight of inter-channel correlation KD (Liu et al., ICCV 2021) on the last stage.
_C.ICKD.BETA = 2.5
# Unused: feature channels are read off the models. Kept so the original YAML files load.
_C.ICKD.FEATDIM_T = [512]
# Unused, see FEATDIM_T.
_C.ICKD.FEATDIM_S = [512]
# new. True: the student-side embedding (1x1 conv + BN) is trained. False reproduces the original release,
# which never handed the embedding to the optimiser (it stayed at its random initialisation).
_C.ICKD.TRAIN_EMBED = True

_C.DKD = CN()
# Weight of target-class KD (TCKD) in decoupled KD (Zhao et al., CVPR 2022).
_C.DKD.ALPHA = 1.0
# Weight of non-target-class KD (NCKD).
_C.DKD.BETA = 8.0
# DKD temperature.
_C.DKD.TEMP = 4.0
# Epochs over which the DKD weight ramps linearly from 0 to 1.
_C.DKD.WARMUP = 20
# new. True: the release's warm-up, one epoch ahead (it passed epoch + 1 with epochs counted from 1), to reproduce
# its numbers; False: min(epoch / WARMUP, 1), as DKD's own code.
_C.DKD.RELEASE_WARMUP = False

# ISRD (input spatial representation distillation) and the original's experimental super-resolution keys.
_C.FSR = CN()
# Unused experimental weight of the original release.
_C.FSR.BETA = 0.0
# Unused experimental weight of the original release.
_C.FSR.GAMMA = 0.0
# Weight eta of the ISRD L1 reconstruction loss (release: 50 CUB@56, 10 CUB@112, 20 Aircraft@56).
_C.FSR.ETA = 0.0
# Unused experimental weight of the original release.
_C.FSR.BETA1 = 0.0
# Unused experimental weight of the original release.
_C.FSR.BETA2 = 0.0
# Unused experimental switch of the original release.
_C.FSR.RESIDUAL = False
# Index into the student's feature list that ISRD decodes; 0 = the input module (conv1 / patch embedding);
# 1-4 = a ResNet stage's output before its last ReLU.
_C.FSR.POSITION = 0

# ---------------------------------------------------------------------------------------------------------------
# Data options
# ---------------------------------------------------------------------------------------------------------------
_C.DATA = CN()
# Dataset: cub (CUB-200-2011) | aircraft (FGVC-Aircraft, variant level).
_C.DATA.DATASET = ""
# Dataset folder in its official layout (see data/README.md); relative to the repository root or absolute.
_C.DATA.DATADIR = ""
# Number of classes (200 for CUB, 100 for Aircraft); checked against the dataset.
_C.DATA.NUM_CLASSES = 200
# Test images are resized (shorter side) to RESIZE_SIZE / LESSEN_RATIO, then center-cropped.
_C.DATA.RESIZE_SIZE = 256
# Large (teacher) crop in pixels; the student sees CROP_SIZE / LESSEN_RATIO.
_C.DATA.CROP_SIZE = 224
# K: the student's image is the teacher's crop made K times smaller (2 -> 112 px, 4 -> 56 px from 224).
_C.DATA.LESSEN_RATIO = 1.0
# Interpolation of the large -> small resize, PIL's codes as the original passed them to torchvision:
# 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming. (The original's comment said
# "1 Nearest 2 Bilinear 3 Bicubic 4 Antialias", which is not what torchvision does with these codes.)
# PIL's bilinear/bicubic are antialiased when shrinking; the tensor pipeline uses antialias=True to match.
# The tensor pipeline supports 0, 2, 3 and 4; 1 and 5 need DATA.PIPELINE "pil".
_C.DATA.LESSEN_TYPE = 2
# Normalisation mean (RGB, 0..1 scale).
_C.DATA.IMAGE_MEAN = [0.485, 0.456, 0.406]
# Normalisation std (RGB, 0..1 scale).
_C.DATA.IMAGE_STD = [0.229, 0.224, 0.225]
# new. Input pipeline. "tensor": JPEGs are decoded once into a cache of uint8 images (shorter side
# CACHE_SIZE), workers only crop/flip them, and the second-scale resize and normalisation run batched on the
# device. "pil": the original per-sample PIL decode + two resizes in loader workers. "device": the tensor
# pipeline's cache held on the training device and each training batch cut there by a few batched kernels, no
# loader workers (for fast GPUs; the cache must fit in GPU memory, about 1.6 GB for CUB at 256 px).
_C.DATA.PIPELINE = "tensor"
# new. Shorter side (pixels, >= 0) of the training images' decoded cache of the tensor and device pipelines, which
# the crops are cut from (never upscaled; 500 holds CUB's full-size images, as the pil pipeline crops them);
# 0 = the larger of RESIZE_SIZE and 256, so that students at 112 or 56 px crop the same 256 px images as their
# teacher and as the distilled students (lib.config.train_cache_size).
_C.DATA.CACHE_SIZE = 0
# new. When DATADIR does not exist (or is an empty folder), generate a small synthetic dataset there in the
# official layout of DATA.DATASET (demo and benchmark configs).
_C.DATA.GENERATE_IF_MISSING = False
# new. Images per class (train and test each) of a generated dataset.
_C.DATA.GENERATE_PER_CLASS = 6
# new. [width, height] in pixels (both positive) of the generated images (the benchmark uses CUB-like 500 x 375).
_C.DATA.GENERATE_IMAGE_SIZE = [80, 60]

# ---------------------------------------------------------------------------------------------------------------
# Solver options
# ---------------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# Initial learning rate of SGD.
_C.SOLVER.START_LR = 0.1
# Epochs at which the learning rate is multiplied by LR_DECAY_FACTOR (MultiStepLR, stepped per epoch).
_C.SOLVER.LR_STEPS = [60, 120, 160]
# Learning-rate decay factor.
_C.SOLVER.LR_DECAY_FACTOR = 0.1
# Number of training epochs.
_C.SOLVER.NUM_EPOCHS = 140
# L2 weight decay of SGD (>= 0).
_C.SOLVER.WEIGHT_DECAY = 5e-4
# SGD momentum (>= 0; the original's spelling is part of its public interface).
_C.SOLVER.MUMENTUM = 0.9

# ---------------------------------------------------------------------------------------------------------------
# Training options
# ---------------------------------------------------------------------------------------------------------------
_C.TRAIN = CN()
# Training batch size (per process).
_C.TRAIN.BATCH_SIZE = 32
# new. Mixed precision: "none" (fp32) | "bf16" | "fp16" (with a gradient scaler). Meant for CUDA; the CPU is not
# refused (torch's autocast and GradScaler run there too, bf16 slower than fp32 without AMX, see the README).
_C.TRAIN.AMP = "none"
# new. Use the channels_last memory format for the networks and images.
_C.TRAIN.CHANNELS_LAST = False
# new. Compile the training step's forward (student, teacher forward and losses) with torch.compile: one graph
# for every method (no graph breaks), built for static shapes, once for the full batches and once for an epoch's
# short last batch in each process (later runs reuse them; each TAS stage has its own); the test pass runs uncompiled.
_C.TRAIN.COMPILE = False
# new. torch.compile's mode when COMPILE is on: "default" | "reduce-overhead" (CUDA graphs: fewer kernel
# launches for short, launch-bound steps; more GPU memory) | "max-autotune". Modes other than "default" need
# COMPILE_BACKEND "inductor".
_C.TRAIN.COMPILE_MODE = "default"
# new. torch.compile's backend when COMPILE is on: "inductor" (generates fused kernels: the speed) |
# "aot_eager" (traces the step with dynamo and AOTAutograd, then runs torch's own kernels) | "eager" (dynamo's
# trace alone). The last two do not speed anything up: they tell a tracing problem from a code-generation one
# when a compiled step fails, as torch.compile's troubleshooting guide does.
_C.TRAIN.COMPILE_BACKEND = "inductor"

# ---------------------------------------------------------------------------------------------------------------
# Testing options
# ---------------------------------------------------------------------------------------------------------------
_C.TEST = CN()
# Test batch size.
_C.TEST.BATCH_SIZE = 32
# new. Checkpoint evaluated by tools/eval.py (a model_best.pth); the network is MODEL.ARCH_S, else MODEL.ARCH,
# at the student's test size (RESIZE_SIZE / LESSEN_RATIO, CROP_SIZE / LESSEN_RATIO).
_C.TEST.CHECKPOINT = ""

# ---------------------------------------------------------------------------------------------------------------
# cuDNN options
# ---------------------------------------------------------------------------------------------------------------
_C.CUDNN = CN()
# torch.backends.cudnn.benchmark (autotuning; non-deterministic). Only takes effect with CUDNN.DETERMINISTIC False.
_C.CUDNN.BENCHMARK = False
# Deterministic algorithms (cuDNN, and torch.use_deterministic_algorithms(warn_only=True) on every device); also
# turns BENCHMARK off; makes resume exact (on a GPU, except through an op without a deterministic CUDA kernel,
# which torch names in a warning: the backward of a ViT's fused attention, of TAS's bilinear/bicubic FKD
# upsampling and of AT's pooling of a student map larger than the teacher's).
_C.CUDNN.DETERMINISTIC = True
# torch.backends.cudnn.enabled.
_C.CUDNN.ENABLE = True

# ---------------------------------------------------------------------------------------------------------------
# new. Two-stage pixel distillation, TAS: teacher -> assistant -> student (tools_2_tas/, docs/tas.md).
# Stage 1 (model compression at DATA.CROP_SIZE): teacher MODEL.ARCH_T -> assistant MODEL.ARCH_A.
# Stage 2 (input compression): assistant MODEL.ARCH_A at CROP_SIZE -> student MODEL.ARCH_S (the same
# architecture) at CROP_SIZE / LESSEN_RATIO, with logit KD (KD.TEMP, KD.ALPHA) + ISRD (FSR.ETA, FSR.POSITION) +
# feature distillation (below). The paper's TAS code is unreleased: every choice here is this project's.
# ---------------------------------------------------------------------------------------------------------------
_C.TAS = CN()
# Stage 1's one-stage method: kd | at | sp | ickd | dkd, set up by its own section (KD, AT, SP, ICKD, DKD).
_C.TAS.STAGE1_KDTYPE = "kd"
# Local ImageNet weight file for the assistant when MODEL.PRETRAIN_A (stage 1); "" uses the weight APIs.
_C.TAS.PRETRAIN_FILE_A = ""
# Stage 2: weight of the feature MSE of each (student, assistant) feature pair, in order: the four stages after
# the input module of a CNN (ResNet layer1..layer4, ShuffleNetV2 stage2..4 and conv5), or the ViT blocks of
# TAS.VIT_BLOCKS (one weight per block). 0 switches a pair off; all 0 leaves logit KD + ISRD.
_C.TAS.FEAT_WEIGHTS = [1.0, 1.0, 1.0, 1.0]
# Stage 2, ViT student and assistant: blocks (1-based, 1..depth) whose patch-token outputs (class token dropped,
# before the final norm, as (B, D, S/16, S/16) maps) are distilled, one per TAS.FEAT_WEIGHTS entry.
_C.TAS.VIT_BLOCKS = [3, 6, 9, 12]
# Stage 2: how the student's features are resized to the assistant's spatial size before the MSE:
# bilinear | bicubic | nearest (align_corners=False: a feature position stands for its region's centre, as the
# small image was made from the large one) | bilinear_align_corners (align_corners=True: the release's unused
# "feature distillation loss in input compression stage").
_C.TAS.FEAT_INTERP = "bilinear"

# ---------------------------------------------------------------------------------------------------------------
# The keys above that nothing reads (marked "Unused"): a resumed experiment may differ from its saved config in
# them, since they cannot change what it learns.
# ---------------------------------------------------------------------------------------------------------------
UNUSED_KEYS = ("BASIC.TIME", "BASIC.SAVE_DIR", "BASIC.ROOT_DIR", "BASIC.BACKUP_CODES", "BASIC.BACKUP_LIST",
               "MODEL.TYPE", "MODEL.PRETRAIN_T", "MODEL.PRETRAIN_FILE_T", "ICKD.FEATDIM_T", "ICKD.FEATDIM_S",
               "FSR.BETA", "FSR.GAMMA", "FSR.BETA1", "FSR.BETA2", "FSR.RESIDUAL")
