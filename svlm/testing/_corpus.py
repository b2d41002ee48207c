"""Built-in English text the offline test tokenizer is trained on.

The words cover what VQA prompts and answers in the tests use (colours, shapes, positions, numbers, yes/no,
instruction phrases), so prompts tokenize into short, word-like pieces as with a real tokenizer.
"""

WORDS = """
red green blue yellow orange purple pink brown black white gray grey cyan magenta violet gold silver
dark light bright pale colour color colours colors coloured colored
square squares circle circles triangle triangles rectangle rectangles star stars cross line lines dot dots
block blocks shape shapes box boxes oval diamond ring stripe stripes pattern grid edge border corner corners
left right top bottom middle center centre above below under over behind front back inside outside near far
next beside between around side sides upper lower row column first second third last
zero one two three four five six seven eight nine ten eleven twelve twenty hundred
number numbers count many much few several some all none no yes true false maybe
what which where who when why how whose is are was were be been being do does did can could would should
the a an this that these those there here it its they them he she we you i me my your our their
of in on at with and or not but from by for to into onto as than then so if
image images picture pictures photo photos scene view frame region area part object objects thing things
describe description answer answers question questions choose option options select correct letter
please briefly short single word words phrase sentence using use based provided given following
large small big tiny huge little long short tall wide narrow thin thick round flat empty full
background foreground sky ground water grass tree trees house car cars road street person people man woman
dog cat bird table chair window door wall floor sign text written reads read word title label
same different similar more less most least larger smaller bigger biggest smallest other another each every
see seen look looks looking show shows shown visible contain contains containing include includes have has
color of the image answer with yes or no is there a in the picture how many are there
"""

SENTENCES = """
What is the colour of the square in the top left corner?
What color is the circle in the middle of the image?
Is there a red triangle in the picture? Answer yes or no.
How many blue blocks are there in the image?
Which shape is on the left side of the picture?
Where is the yellow star located?
Describe the image briefly.
Answer the question using a single word or phrase.
Answer with the option's letter from the given choices directly.
Is the green rectangle above the white circle?
Are there more red squares than blue squares?
What is written on the sign?
Count the number of objects in the picture.
The image shows a small red square next to a large blue circle.
There are three green triangles and two yellow stars.
Yes, there is a black cross at the bottom right.
No, the purple oval is below the orange line.
The background is gray and the blocks are coloured.
USER: ASSISTANT: SYSTEM: user assistant system
system
user
assistant
[INST] What is shown in the image? [/INST]
[INST] [/INST] [/INST]
You are a helpful assistant.
A. B. C. D. (A) (B) (C) (D) 0 1 2 3 4 5 6 7 8 9 10 11 12 16 20 24 32 64 100 128 192 256 576
"""


def corpus() -> list[str]:
    """Training lines: each word (plain, capitalised, with a leading space) and each sentence, repeated.

    Repetition gives frequent words whole-word merges, so the vocabulary ends up word-like.
    """
    words = sorted(set(WORDS.split()))
    lines = [line.strip() for line in SENTENCES.strip().splitlines() if line.strip()]
    variants = [w for word in words for w in (word, word.capitalize())]
    return lines * 4 + [" ".join(variants[i : i + 12]) for i in range(0, len(variants), 12)] * 3
